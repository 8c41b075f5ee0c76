"""Linear-chain CRF arithmetic: log-partition, gold-path score, Viterbi, exact marginals and mean-field.

Pure tensor functions on a padded batch: ``emit (B, W, C)`` emission scores, ``mask (B, W)`` the real words
(each sentence's words first, padding after), ``trans`` the transition scores ``trans[i, j]`` of label ``j``
following label ``i``, ``start``/``end (C,)`` the scores of the first/last label. ``trans`` may also be
``(B, W, C, C)``: one matrix per position, entry ``t`` scoring the step from word ``t-1`` to word ``t``
(entry 0 unused); ``start``/``end`` may be ``(B, C)``. That is how words that exited at different layers
meet: each step takes the transitions of the deeper of its two words (:class:`earlytag.model.heads.CRFHead`).

Exact inference loops over positions only (never over sentences). Mean-field is the parallel approximation:
every position's label distribution is updated at once from its emission and the expected transition scores
of its neighbours, ``M`` times; unrolled, it is a network trained end to end on its output marginals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NEG = -1e4  # a forbidden transition at decoding (finite: 0·NEG stays 0, -inf would give NaN)


def _step(trans: torch.Tensor, t: int) -> torch.Tensor:
    """Transitions into position ``t``: ``(C, C)`` or ``(B, C, C)``."""
    return trans if trans.dim() == 2 else trans[:, t]


def _ends(mask: torch.Tensor) -> torch.Tensor:
    """``(B, W)`` True at each sentence's last word."""
    nxt = torch.cat([mask[:, 1:], mask.new_zeros(mask.shape[0], 1)], 1)
    return mask & ~nxt


def _alphas(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor) -> list[torch.Tensor]:
    """The forward recursion: at each position ``(B, C)`` log-sums of every label prefix ending there (padding
    carries the sentence's last value on)."""
    alphas = [start + emit[:, 0]]
    for t in range(1, emit.shape[1]):
        nxt = torch.logsumexp(alphas[-1].unsqueeze(2) + _step(trans, t), 1) + emit[:, t]  # (B, C)
        alphas.append(torch.where(mask[:, t, None], nxt, alphas[-1]))
    return alphas


def log_partition(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                  end: torch.Tensor) -> torch.Tensor:
    """``log Z`` of every sentence: ``(B,)`` (0 for a sentence without words)."""
    z = torch.logsumexp(_alphas(emit, mask, trans, start)[-1] + end, 1)
    return torch.where(mask[:, 0], z, torch.zeros_like(z))


def path_score(emit: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor,
               start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Score of the label sequence ``tags (B, W)`` (any value on padding): ``(B,)``."""
    b, w, c = emit.shape
    tags = tags.masked_fill(~mask, 0)
    e = emit.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, W)
    score = (e * mask).sum(1)
    first = start.gather(-1, tags[:, :1]).squeeze(-1) if start.dim() == 2 else start[tags[:, 0]]
    score = score + first * mask[:, 0]
    last = tags.gather(1, (mask.sum(1) - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # (B,)
    fin = end.gather(-1, last.unsqueeze(1)).squeeze(1) if end.dim() == 2 else end[last]
    score = score + fin * mask[:, 0]
    if w > 1:
        prev, cur = tags[:, :-1], tags[:, 1:]  # (B, W-1)
        if trans.dim() == 2:
            tr = trans[prev, cur]
        else:
            tr = trans[:, 1:].flatten(2).gather(2, (prev * c + cur).unsqueeze(2)).squeeze(2)
        score = score + (tr * mask[:, 1:]).sum(1)
    return score


def nll(emit: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
        end: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``tags`` per sentence ``(B,)``."""
    return log_partition(emit, mask, trans, start, end) - path_score(emit, tags, mask, trans, start, end)


def viterbi(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
            end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best label sequence ``(B, W)`` (0 on padding) and its score ``(B,)``. Forbidden transitions are simply
    very negative entries of ``trans``/``start``/``end``.

    Runs labels first (``(C, B)`` per position): the forward pass keeps only each position's best scores (a max
    over the outer dimension, which a CPU vectorises), and the backtrace takes one argmax of ``C`` candidates per
    position. torch's max-with-indices over a few labels is several times slower than the max alone
    (scripts/crf_decode_bench.py), so no back-pointers are stored."""
    b, w, c = emit.shape
    per_position = trans.dim() == 4
    em = emit.transpose(0, 1).transpose(1, 2)  # (W, C, B)
    live = mask.t()  # (W, B)
    tr = trans.permute(1, 2, 3, 0) if per_position else trans.unsqueeze(-1)  # (W, C, C, B) or (C, C, 1)
    score = (start.t() if start.dim() == 2 else start.unsqueeze(-1)) + em[0]  # (C, B)
    scores = [score]
    for t in range(1, w):
        best = (score.unsqueeze(1) + (tr[t] if per_position else tr)).amax(0)  # (C, B): over the previous label
        score = torch.where(live[t], best + em[t], score)  # padding carries the last word's scores on
        scores.append(score)
    best_score, last = (score + (end.t() if end.dim() == 2 else end.unsqueeze(-1))).max(0)  # (B,)
    path = [last]
    rows = torch.arange(b, device=emit.device)
    for t in range(w - 2, -1, -1):
        into = trans[rows, t + 1, :, last].t() if per_position else trans[:, last]  # (C, B): every label -> last
        prev = (scores[t] + into).max(0).indices  # (B,)
        last = torch.where(live[t + 1], prev, last)  # through padding the label stays
        path.append(last)
    return torch.stack(path[::-1], 1).masked_fill(~mask, 0), best_score


def refine_blocks(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                  end: torch.Tensor, labels: torch.Tensor, block: int = 3, confidence: torch.Tensor | None = None,
                  below: float = 0.9, sweeps: int = 2) -> torch.Tensor:
    """Improve the labels ``(B, W)`` of a parallel decoder (mean-field) toward the Viterbi path: the exact best
    labels of blocks of ``block`` words (:func:`best_in_blocks`), many blocks at once, each with its neighbours'
    current labels held fixed (their transitions into and out of the block become the block's start/end scores).
    A sweep decodes the blocks at even places, then the odd ones between them (never two neighbours at once); the
    second sweep shifts the blocks by ``block // 2``, so that every boundary of the first lies inside a block of
    the second.

    Block coordinate ascent on the CRF score: no step lowers the path's score, a sentence of at most ``block``
    words gets its exact Viterbi path, and a label sequence that breaks the scheme (very negative ``trans``) is
    repaired wherever a valid one exists. Nothing loops over the sentence: ``2 x sweeps`` batched block decodes.
    With ``confidence (B, W)`` (e.g. the mean-field probability of each label) only the blocks holding a word
    below ``below`` or a forbidden step (as the sweep starts) are decoded again; the others keep their labels."""
    b, w, c = emit.shape
    per_position = trans.dim() == 4
    last_word = mask.sum(1) - 1  # (B,)
    starts, ends = start.view(-1, c).expand(b, c), end.view(-1, c).expand(b, c)  # (B, C)
    labels = labels.masked_fill(~mask, 0)
    inside = torch.arange(block, device=emit.device)  # (K,)
    for shift in (0, block // 2)[:sweeps]:
        if shift >= w or (shift and w <= block):
            break  # nothing past the shift, or every sentence was one block
        nb = -(-(w - shift) // block)  # blocks per sentence
        first = torch.arange(nb, device=emit.device) * block + shift  # (nb,) each block's first position
        todo = first.view(1, nb) <= last_word.view(b, 1)  # (B, nb) blocks with words
        if confidence is not None:
            before = torch.cat([labels[:, :1], labels[:, :-1]], 1)  # (B, W) each word's left neighbour's label
            step = (trans[torch.arange(b, device=emit.device).unsqueeze(1), torch.arange(w, device=emit.device),
                          before, labels] if per_position else trans[before, labels])  # (B, W) the step into it
            step[:, 0] = starts.gather(1, labels[:, :1]).squeeze(1)
            doubt = mask & ((confidence < below) | (step < NEG / 2))  # (B, W)
            doubt = torch.cat([doubt[:, shift:], doubt.new_zeros(b, nb * block - (w - shift))], 1)
            todo = todo & doubt.view(b, nb, block).any(2)
        for parity in (0, 1):
            row, j = todo[:, parity::2].nonzero().unbind(1)  # (N,) sentence and block of each block to decode
            if row.numel() == 0:
                continue
            at = first[parity::2][j]  # (N,) its first position
            pos = (at.unsqueeze(1) + inside).clamp(max=w - 1)  # (N, K)
            real = mask[row.unsqueeze(1), pos] & (at.unsqueeze(1) + inside < w)  # (N, K) its words
            prev = labels[row, (at - 1).clamp(min=0)]  # (N,) the label before the block
            after = (at + block).clamp(max=w - 1)  # (N,) the position after it
            nxt = labels[row, after]  # (N,)
            if per_position:
                tr = trans[row.unsqueeze(1), pos]  # (N, K, C, C)
                into = trans[row, at.clamp(1, w - 1), prev]  # (N, C): prev -> each label of the first word
                out = trans[row, after, :, nxt]  # (N, C): each label of the last word -> next
            else:
                tr, into, out = trans, trans[prev], trans[:, nxt].t()
            st = torch.where((at == 0).unsqueeze(1), starts[row], into)  # (N, C)
            en = torch.where((at + block > last_word[row]).unsqueeze(1), ends[row], out)  # holds the last word
            tags = best_in_blocks(emit[row.unsqueeze(1), pos], real, tr, st, en)  # (N, K)
            labels = labels.index_put((row.unsqueeze(1).expand_as(pos)[real], pos[real]), tags[real])
    return labels


ENUMERATE = 1024  # blocks with at most this many label sequences are scored all at once, not by a loop


def best_in_blocks(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                   end: torch.Tensor) -> torch.Tensor:
    """The best labels ``(N, K)`` of ``N`` short sequences (blocks; ``start``/``end`` ``(N, C)``), as
    :func:`viterbi` gives them. With few label sequences (``C ** K <= ENUMERATE``) every one is scored in a
    handful of batched sums and the best taken by one max: no loop over positions, which on short blocks costs
    more than the arithmetic. Else Viterbi."""
    n, k, c = emit.shape
    if c ** k > ENUMERATE:
        return viterbi(emit, mask, trans, start, end)[0]
    at_last = F.one_hot(mask.sum(1) - 1, k).unsqueeze(-1).to(emit.dtype)  # (N, K, 1) each block's last word
    em = emit + at_last * end.unsqueeze(1)  # (N, K, C): the end scores on the last word
    em[:, 0] += start
    pad = torch.full((c,), NEG, dtype=emit.dtype, device=emit.device)
    pad[0] = 0.0  # a padded position takes label 0 at no cost
    em = torch.where(mask.unsqueeze(-1), em, pad)
    shape = [n] + [1] * k
    score = em[:, 0].reshape(shape[:1] + [c] + shape[2:])  # (N, C, 1, ..., 1)
    for p in range(1, k):  # extend every sequence by position p: (N, C, ..., C, 1, ...)
        step = trans if trans.dim() == 2 else trans[:, p]  # (C, C) or (N, C, C): into position p
        step = torch.where(mask[:, p].view(n, 1, 1), step, 0.0)  # nothing into padding
        grow = [n] + [1] * (p - 1) + [c, c] + [1] * (k - p - 1)
        score = score + (step + em[:, p].unsqueeze(1)).reshape(grow)
    best = score.reshape(n, -1).max(1).indices  # (N,) the best sequence, as one number in base C
    digits = c ** torch.arange(k - 1, -1, -1, device=emit.device)  # (K,)
    return (best.unsqueeze(1) // digits) % c


def marginals(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
              end: torch.Tensor) -> torch.Tensor:
    """Exact per-word label marginals ``(B, W, C)`` by forward-backward (0 on padding)."""
    b, w, c = emit.shape
    alphas = _alphas(emit, mask, trans, start)
    last = _ends(mask)
    beta = torch.where(last[:, w - 1, None], end, torch.zeros_like(end).expand(b, c))
    betas = [beta]
    for t in range(w - 2, -1, -1):
        nxt = torch.logsumexp(_step(trans, t + 1) + (emit[:, t + 1] + betas[-1]).unsqueeze(1), 2)  # (B, C)
        beta = torch.where(last[:, t, None], end.expand(b, c), torch.where(mask[:, t + 1, None], nxt, betas[-1]))
        betas.append(beta)
    lp = torch.stack(alphas, 1) + torch.stack(betas[::-1], 1)  # (B, W, C)
    return (lp - torch.logsumexp(lp, 2, keepdim=True)).exp() * mask.unsqueeze(2)


def meanfield(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
              end: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """Mean-field log-marginals ``(B, W, C)`` after ``iters`` parallel updates (``iters=0``: the softmax of the
    emissions). Position ``t`` reads ``Σ_i q[t-1, i]·trans[i, :]`` from its left neighbour and
    ``Σ_j trans[:, j]·q[t+1, j]`` from its right one; padding sends nothing. Differentiable: trained end to
    end with a loss on the returned log-marginals. A ``(B, W, C)`` view of :func:`meanfield_labels_first`."""
    return meanfield_labels_first(emit, mask, trans, start, end, iters).transpose(1, 2)


def meanfield_labels_first(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                           end: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """:func:`meanfield` as ``(B, C, W)``: the layout it runs in. A softmax, a max or an argmax over a last
    dimension of a handful of labels is several times slower on a CPU than over the middle one
    (scripts/crf_decode_bench.py); take labels with :func:`best_labels` of this."""
    b, w, c = emit.shape
    # (B, C, W), always a copy: written in place below (with one word, the transpose alone would be emit's memory)
    base = emit.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    rows = torch.arange(b, device=emit.device)
    last = (mask.sum(1) - 1).clamp(min=0)  # (B,) each sentence's last word
    live = mask[:, :1].to(emit.dtype)  # (B, 1): sentences with words
    base[:, :, 0] += start * live  # start scores on the first word
    base[rows, :, last] += end * live  # end scores on the last
    m = mask.unsqueeze(1).to(emit.dtype)  # (B, 1, W)
    logits = base
    if trans.dim() == 2:
        both = torch.cat([trans.transpose(0, 1), trans])  # (2C, C): messages forward and backward in one product
    for _ in range(iters):
        q = logits.softmax(1) * m  # (B, C, W), nothing on padding
        if trans.dim() == 2:
            msgs = torch.matmul(both, q)  # (B, 2C, W)
            into, back = msgs[:, :c], msgs[:, c:]  # Σ_i trans[i, j]·q[i, t] (for t+1), Σ_j trans[i, j]·q[j, t] (t-1)
            left, right = into[..., :-1], back[..., 1:]
        else:  # trans (B, W, C, C): entry t scores the step t-1 -> t
            left = torch.einsum("bit,btij->bjt", q[..., :-1], trans[:, 1:])
            right = torch.einsum("btij,bjt->bit", trans[:, 1:], q[..., 1:])
        logits = base.clone()
        logits[..., 1:] += left
        logits[..., :-1] += right
    return logits.log_softmax(1)


def best_labels(logq: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the maximum over ``dim`` (the first on ties), as ``logq.max(dim)``: with a few
    labels on the middle dimension torch's ``max``/``argmax`` with indices are 10-200x slower on a CPU than
    ``amax`` and a comparison (scripts/crf_decode_bench.py)."""
    best = logq.amax(dim, keepdim=True)
    c = logq.shape[dim]
    rank = torch.arange(c, 0, -1, device=logq.device, dtype=logq.dtype).view(
        [c if i == dim % logq.dim() else 1 for i in range(logq.dim())])
    first = ((logq >= best) * rank).amax(dim)  # c - index of the first maximum (float: faster than integers)
    return best.squeeze(dim), c - first.long()


def normalised_entropy(logp: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy of ``exp(logp)`` over its labels (``dim``) divided by ``log C``: the uncertainty in [0, 1]."""
    c = logp.shape[dim]
    if c < 2:
        return torch.zeros_like(logp.select(dim, 0))
    plogp = torch.where(logp == float("-inf"), 0.0, logp.exp() * logp)
    return plogp.sum(dim) * (-1.0 / math.log(c))


def allowed(labels: list[str], task: str, scheme: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which transitions, first and last labels the tag scheme allows: ``(C, C)``, ``(C,)``, ``(C,)`` booleans.

    IOB2: ``I-X`` only after ``B-X``/``I-X`` and never first. IOBES: ``I-X``/``E-X`` only after ``B-X``/``I-X``,
    ``B-``/``S-``/``O`` only after ``E-``/``S-``/``O``, first ``B``/``S``/``O``, last ``E``/``S``/``O``.
    Word segmentation (B/M/E/S) follows the IOBES rules. Other tasks (POS) allow everything."""
    c = len(labels)
    trans = torch.ones(c, c, dtype=torch.bool)
    first = torch.ones(c, dtype=torch.bool)
    last = torch.ones(c, dtype=torch.bool)
    if task == "cws":
        parts = [(lab.upper().replace("M", "I"), "") for lab in labels]
        scheme = "iobes"
    elif task in ("ner", "chunk"):
        parts = [(lab.split("-", 1)[0], lab.split("-", 1)[1] if "-" in lab else "") for lab in labels]
    else:
        return trans, first, last
    inside = ("I",) if scheme == "iob2" else ("I", "E")
    for j, (pj, tj) in enumerate(parts):
        if pj in inside:
            first[j] = False
            for i, (pi, ti) in enumerate(parts):
                trans[i, j] = pi in ("B", "I") and ti == tj
        elif scheme == "iobes":
            for i, (pi, _) in enumerate(parts):
                trans[i, j] = pi in ("E", "S", "O")
        if scheme == "iobes" and pj in ("B", "I"):
            last[j] = False
    return trans, first, last
