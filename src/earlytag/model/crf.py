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

import numpy as np
import torch
import torch.nn.functional as F

LOG2E = 1.0 / math.log(2.0)
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

    The loop over positions is bound by the cost of each operation on ``(C, B)`` arrays of a few hundred
    numbers, not by arithmetic: on a CPU, without gradients, it runs in NumPy (:func:`viterbi_numpy`, about a
    microsecond per operation against several for a torch operator; about twice as fast over a whole batch,
    scripts/crf_decode_bench.py); elsewhere in torch (:func:`viterbi_torch`). Both give the same labels."""
    if emit.device.type == "cpu" and not any(x.requires_grad for x in (emit, trans, start, end)):
        return viterbi_numpy(emit, mask, trans, start, end)
    return viterbi_torch(emit, mask, trans, start, end)


def viterbi_numpy(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                  end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`viterbi` on CPU tensors, computed in NumPy (:func:`_viterbi_np`), labels first ``(C, B)`` per
    position."""
    b, w, c = emit.shape
    dtype = torch.float64 if emit.dtype == torch.float64 else torch.float32
    em = np.ascontiguousarray(emit.detach().to(dtype).numpy().transpose(1, 2, 0))  # (W, C, B)
    tr_t = trans.detach().to(dtype)
    tr = (np.ascontiguousarray(tr_t.permute(1, 2, 3, 0).numpy()) if trans.dim() == 4  # (W, C, C, B)
          else tr_t.numpy())  # (C, C)
    st = start.detach().to(dtype).numpy()
    en = end.detach().to(dtype).numpy()
    st, en = (st.T, en.T) if start.dim() == 2 else (st[:, None], en[:, None])  # (C, B) or (C, 1)
    lastpos = np.maximum(mask.sum(1).numpy() - 1, 0)  # (B,) each sentence's last word
    path, best = _viterbi_np(em, tr, st, en, lastpos)
    labels = torch.from_numpy(np.ascontiguousarray(path.T)).masked_fill_(~mask, 0)
    return labels, torch.from_numpy(best).to(emit.dtype)


def _viterbi_np(em: np.ndarray, tr: np.ndarray, st: np.ndarray, en: np.ndarray,
                lastpos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Viterbi recursion in NumPy, labels first: ``em (W, C, B)``, ``tr (C, C)`` or ``(W, C, C, B)``,
    ``st``/``en (C, B)`` or ``(C, 1)``, ``lastpos (B,)`` each sentence's last word. The forward pass runs
    through padding without masking it (each sentence's scores are read at its last word), the backtrace starts
    each sentence there. The best path ``(W, B)`` (past a sentence's end its last label) and its score
    ``(B,)``."""
    w, c, b = em.shape
    per_position = tr.ndim == 4
    cols = np.arange(b)
    scores = np.empty_like(em)  # (W, C, B): the best score of every label at every position
    np.add(st, em[0], out=scores[0])
    both = np.empty((c, c, b), dtype=em.dtype)  # (previous label, label, sentence)
    step = tr if per_position else tr[:, :, None]
    for t in range(1, w):
        np.add(scores[t - 1][:, None, :], step[t] if per_position else step, out=both)
        np.max(both, 0, out=scores[t])
        scores[t] += em[t]
    final = scores[lastpos, :, cols].T + en  # (C, B)
    last = final.argmax(0)  # (B,)
    best = final[last, cols]
    path = np.zeros((w, b), dtype=np.int64)
    path[lastpos, cols] = last
    for t in range(w - 2, -1, -1):
        into = tr[t + 1][:, last, cols] if per_position else tr[:, last]  # (C, B): every label -> the next one
        last = np.where(t < lastpos, (scores[t] + into).argmax(0), last)  # past a sentence's end its label stays
        path[t] = last
    return path, best


def viterbi_torch(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                  end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`viterbi` in torch, on any device. Runs labels first (``(C, B)`` per position): the forward pass keeps only each position's best scores (a max
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


def _with_boundary(trans: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The transitions with one more label ``C``, the boundary around each sentence: ``[C, j]`` is the start
    score of ``j``, ``[i, C]`` the end score of ``i``, ``[C, C]`` 0; ``(C+1, C+1)``. Per-position transitions
    ``(B, W, C, C)`` give ``(B, W+1, C+1, C+1)``: entry ``t`` scores the steps into position ``t`` (``W``: the
    boundary after a sentence that fills the batch), the start and end scores at every position."""
    c = trans.shape[-1]
    if trans.dim() == 2:
        ext = F.pad(trans, (0, 1, 0, 1))
        ext[c, :c], ext[:c, c] = start, end
        return ext
    ext = F.pad(trans, (0, 1, 0, 1, 0, 1))  # (B, W+1, C+1, C+1)
    ext[:, :, c, :c] = start.unsqueeze(1)
    ext[:, :, :c, c] = end.unsqueeze(1)
    return ext


def refine_runs(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                end: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor, below: float = 0.9,
                whole_if_cheaper: bool = False) -> torch.Tensor:
    """Improve the labels ``(B, W)`` of a parallel decoder (mean-field) toward the Viterbi path: the words it is
    sure of (``confidence (B, W)`` at least ``below``, e.g. the mean-field probability of each label) are anchors
    and keep their labels; every run of doubtful words between anchors gets its exact best labels given the
    anchors around it (their transitions into and out of the run become the run's start/end scores): one
    :func:`viterbi` over all runs at once, as long as the longest. A word whose step from or to a neighbour
    breaks the tag scheme (a very negative ``trans``, ``start`` or ``end``) doubts too, so labels that break the
    scheme are repaired wherever valid ones exist. ``below >= 1``: every word doubts, which is Viterbi.
    ``whole_if_cheaper``: where Viterbi over the whole batch would cost less than over the runs (many long runs:
    a model unsure of most words; :func:`_runs_cost_more`), the batch gets Viterbi's labels instead: exact, and
    the sure words may then change too.

    Exact where the anchors are Viterbi's labels (the best path through fixed labels is the best path of each
    run between them), and never a lower path score than the labels it started from. Nothing loops over the
    sentence: a few dozen operations on the whole batch, then a loop as long as the longest run.

    On a CPU without gradients and with one transition matrix it runs in NumPy (:func:`refine_runs_numpy`:
    its operations are on ``(B, W)`` masks and a few runs, where a torch operator's fixed cost of several
    microseconds was most of the time); elsewhere in torch (:func:`refine_runs_torch`). Both give the same
    labels."""
    if (emit.device.type == "cpu" and trans.dim() == 2
            and not any(x.requires_grad for x in (emit, trans, start, end))):
        return refine_runs_numpy(emit, mask, trans, start, end, labels, confidence, below, whole_if_cheaper)
    return refine_runs_torch(emit, mask, trans, start, end, labels, confidence, below, whole_if_cheaper)


STEP_COST = 64 * 7 * 7  # a Viterbi step's fixed cost, as arithmetic on 64 rows of 7 labels (see _runs_cost_more)


def _runs_cost_more(k: int, r: int, w: int, b: int, c: int) -> bool:
    """Whether a Viterbi over ``r`` runs padded to ``k`` words costs more than one over the ``b`` sentences of
    ``w`` words: each costs its steps times (a fixed cost per step + rows x labels² of arithmetic), the fixed
    cost about that of 64 rows at 7 labels (on random emissions, where most words doubt, the runs cost more at
    every length from 64 to 1,024 words and this rule sends them to Viterbi; on a model's own emissions the runs
    are a few words long and it keeps them: scripts/crf_decode_bench.py)."""
    return k * (r * c * c + STEP_COST) >= w * (b * c * c + STEP_COST)


def refine_runs_numpy(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                      end: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
                      below: float = 0.9, whole_if_cheaper: bool = False) -> torch.Tensor:
    """:func:`refine_runs` in NumPy, for CPU tensors and one transition matrix ``(C, C)``. A run of one word gets
    its best label between its two anchors in one vectorised step (the Viterbi of a one-word run, the same sums
    in the same order); only longer runs go through the loop."""
    b, w, c = emit.shape
    m = mask.numpy()
    dtype = np.float64 if emit.dtype == torch.float64 else np.float32
    # the transitions with the boundary label C, as _with_boundary makes them (here in NumPy: its torch operators
    # would cost more than the rest of this function on a model's own emissions)
    ext = np.zeros((c + 1, c + 1), dtype=dtype)
    ext[:c, :c], ext[c, :c], ext[:c, c] = trans.numpy(), start.numpy(), end.numpy()
    # the labels between boundary labels C (before the first word, on padding, after the last column): (B, W+2)
    framed = np.full((b, w + 2), c, dtype=np.int64)
    np.copyto(framed[:, 1:-1], labels.numpy(), where=m)
    pair = framed[:, :-1] * (c + 1) + framed[:, 1:]  # (B, W+1) each step into a place: ext[previous, next]
    broken = np.take((ext < NEG / 2).ravel(), pair)  # (B, W+1) the step into a place breaks the scheme
    framed_doubt = np.zeros((b, w + 2), dtype=bool)
    doubt = framed_doubt[:, 1:-1]  # (B, W) a view: a step into or out of the word, or a doubtful label
    if below >= 1:
        doubt[:] = m
    else:
        np.logical_or(broken[:, :w], broken[:, 1:], out=doubt)
        doubt |= confidence.numpy() < below
        doubt &= m
    # runs of doubtful words, as in refine_runs_torch
    edges = np.flatnonzero(framed_doubt[:, 1:] != framed_doubt[:, :-1]).reshape(-1, 2)  # (R, 2)
    out = np.zeros(b * w + 1, dtype=np.int64)  # the labels, 0 on padding, and one spare place at the end
    np.copyto(out[:-1].reshape(b, w), labels.numpy(), where=m)
    if len(edges):
        first, stop = edges[:, 0], edges[:, 1]  # (R,) places in (B, W+1)
        length = stop - first
        # decided on every run, as refine_runs_torch decides it, so that both give the same labels
        if whole_if_cheaper and _runs_cost_more(int(length.max()), len(length), w, b, c):
            return viterbi(emit, mask, trans, start, end)[0]
        row = first // (w + 1)
        word = first - row  # the run's first word as a place of (B*W,)
        edge = framed.ravel()
        prev, nxt = edge[first + row], edge[stop + row + 1]  # (R,) the anchors around it (C: the boundary)
        flat = emit.numpy().reshape(b * w, c)
        one = length == 1  # a run of one word: its best label between its two anchors, without the loop
        if one.any():
            p1 = word[one]
            out[p1] = (ext[prev[one], :c] + flat[p1].astype(dtype, copy=False) + ext[:c, nxt[one]].T).argmax(1)
            keep = ~one
            length, word, prev, nxt = length[keep], word[keep], prev[keep], nxt[keep]
        if len(length):
            inside = np.arange(int(length.max()))
            real = inside < length[:, None]  # (R, K)
            pos = np.minimum(word[:, None] + inside, b * w - 1)  # (R, K); past a run's end unused
            em = flat[pos.T].astype(dtype, copy=False).transpose(0, 2, 1)  # (K, C, R)
            path, _ = _viterbi_np(np.ascontiguousarray(em), ext[:c, :c], ext[prev, :c].T, ext[:c, nxt], length - 1)
            out[np.where(real, pos, b * w)] = path.T
    return torch.from_numpy(out[:-1].reshape(b, w))


def refine_runs_torch(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                      end: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
                      below: float = 0.9, whole_if_cheaper: bool = False) -> torch.Tensor:
    """:func:`refine_runs` in torch, on any device, with one transition matrix or per-position ones."""
    b, w, c = emit.shape
    pad = ~mask
    # the labels between boundary labels C (before the first word, on padding, after the last column): (B, W+2)
    framed = F.pad(labels.masked_fill(pad, c), (1, 1), value=c)
    ext = _with_boundary(trans, start, end)
    bad = ext < NEG / 2  # the steps that break the scheme (a start, a transition, an end)
    pair = torch.add(framed[:, 1:], framed[:, :-1], alpha=c + 1)  # (B, W+1) each step into a place, one index
    broken = (bad.flatten(2).gather(2, pair.unsqueeze(2)).squeeze(2) if trans.dim() == 4
              else bad.flatten().index_select(0, pair.flatten()).view(b, w + 1))  # (B, W+1) the step into a place
    doubt = broken[:, :w] | broken[:, 1:]  # (B, W) a step into or out of the word
    if below >= 1:
        doubt = mask
    else:
        doubt |= confidence < below
        doubt &= mask
    # runs of doubtful words: between places of the (B, W+1) grid where doubt changes, a run's first word and
    # the place after its last; they come in pairs, row by row (every row starts and ends sure)
    framed_doubt = F.pad(doubt, (1, 1))  # (B, W+2)
    edges = (framed_doubt[:, 1:] ^ framed_doubt[:, :-1]).flatten().nonzero().view(-1, 2)  # (R, 2)
    if edges.numel() == 0:
        return labels.masked_fill(pad, 0)
    first, stop = edges.unbind(1)  # (R,) places in (B, W+1)
    length = stop - first  # (R,)
    k = int(length.max())
    if whole_if_cheaper and _runs_cost_more(k, edges.shape[0], w, b, c):
        return viterbi(emit, mask, trans, start, end)[0]
    row = first.div(w + 1, rounding_mode="floor")  # (R,)
    word = first - row  # (R,) the run's first word as a place of (B*W,)
    inside = torch.arange(k, device=emit.device)
    real = inside < length.unsqueeze(1)  # (R, K)
    pos = (word.unsqueeze(1) + inside).clamp_(max=b * w - 1)  # (R, K); past a run's end unused
    em = emit.reshape(b * w, c).index_select(0, pos.flatten()).view(-1, k, c)  # (R, K, C)
    edge = framed.flatten()  # framed[row, col] is place row*(W+2)+col = first+row for the label before the run
    prev, nxt = edge[first + row], edge[stop + row + 1]  # (R,) the anchors around it (C: the boundary)
    if trans.dim() == 4:
        col = first - row * (w + 1)  # (R,)
        tr = ext[row.unsqueeze(1), (col.unsqueeze(1) + inside).clamp(max=w), :c, :c]  # (R, K, C, C)
        st = ext[row, col, prev, :c]  # (R, C): prev -> each label of the first word
        en = ext[row, col + length, :c, nxt]  # (R, C): each label of the last word -> next
    else:
        tr, st, en = trans, ext[prev, :c], ext[:c, nxt].t()
    tags = viterbi(em, real, tr, st, en)[0]  # (R, K)
    # written over the labels, each run's columns past its end into one spare place at the end
    out = F.pad(labels.masked_fill(pad, 0).view(-1), (0, 1))  # (B*W + 1,)
    out.scatter_(0, torch.where(real, pos, b * w).flatten(), tags.flatten())
    return out[:-1].view(b, w)


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
    return _meanfield_logits(emit, mask, trans, start, end, iters).log_softmax(1)


def meanfield_probs(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                    end: torch.Tensor, iters: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What decoding needs of :func:`meanfield_labels_first`, without its logarithm: ``(best, labels, probs)``,
    each word's most probable label ``(B, W)`` (the first on ties, as :func:`best_labels`), its probability
    ``(B, W)`` and every label's probability ``(B, C, W)``. Not for training (no log-probabilities to take a
    loss on)."""
    logits = _meanfield_logits(emit, mask, trans, start, end, iters)  # (B, C, W)
    z = (logits - logits.amax(1, keepdim=True)).mul_(LOG2E)  # 0 at each word's best labels, in bits
    probs = torch.exp2(z)  # exp(x) as 2^(x·log2 e): torch's CPU exp2 is several times faster than its exp
    best = probs.sum(1, keepdim=True).reciprocal_()  # (B, 1, W): exp(0) / the sum, the best label's probability
    probs.mul_(best)
    return best.squeeze(1), _first_top(z, 1), probs


def _labels_first(emit: torch.Tensor) -> torch.Tensor:
    """``emit (B, W, C)`` as a new contiguous ``(B, C, W)``. On a CPU a batched product with the identity writes
    it about twice as fast as a strided copy of a few labels (exact: every entry is x·1 plus zeros; not where
    a GPU's matrix units may round, there it is the copy)."""
    if emit.device.type != "cpu":
        return emit.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    c = emit.shape[2]
    return torch.bmm(torch.eye(c, dtype=emit.dtype).expand(emit.shape[0], c, c), emit.transpose(1, 2))


def _meanfield_logits(emit: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
                      end: torch.Tensor, iters: int) -> torch.Tensor:
    """The mean-field scores ``(B, C, W)`` after ``iters`` updates, before their normalisation over labels."""
    b, w, c = emit.shape
    base = _labels_first(emit)  # (B, C, W), a copy: written in place below
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
    return logits


def best_labels(logq: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the maximum over ``dim`` (the first on ties), as ``logq.max(dim)``: with a few
    labels on the middle dimension torch's ``max``/``argmax`` with indices are 10-200x slower on a CPU than
    ``amax`` and a comparison (scripts/crf_decode_bench.py)."""
    best = logq.amax(dim, keepdim=True)
    return best.squeeze(dim), _first_top(logq.detach() - best.detach(), dim)


def _first_top(z: torch.Tensor, dim: int) -> torch.Tensor:
    """The index over ``dim`` of the first 0 of ``z`` (at most 0 everywhere, 0 at each maximum); overwrites
    ``z``. All in floats: a comparison with a bool result, or the bool's promotion, each costs several times
    the float arithmetic on a CPU."""
    c = z.shape[dim]
    rank = torch.arange(c, 0, -1, device=z.device, dtype=z.dtype).view(
        [c if i == dim % z.dim() else 1 for i in range(z.dim())])
    return c - z.ge_(0.0).mul_(rank).amax(dim).long()  # c - (c - index) of the first maximum


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
