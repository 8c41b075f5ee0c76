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
    very negative entries of ``trans``/``start``/``end``."""
    b, w, c = emit.shape
    score = start + emit[:, 0]  # (B, C)
    back = []
    for t in range(1, w):
        cand = score.unsqueeze(2) + _step(trans, t)  # (B, C_prev, C)
        best, arg = cand.max(1)  # (B, C)
        live = mask[:, t, None]
        score = torch.where(live, best + emit[:, t], score)
        # a padded step points each label at itself, so the backtrace walks through padding unchanged
        back.append(torch.where(live, arg, torch.arange(c, device=emit.device).expand(b, c)))
    score = score + end
    best_score, last = score.max(1)  # (B,)
    path = [last]
    for arg in reversed(back):
        last = arg.gather(1, last.unsqueeze(1)).squeeze(1)
        path.append(last)
    tags = torch.stack(path[::-1], 1).masked_fill(~mask, 0)
    return tags, best_score


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
