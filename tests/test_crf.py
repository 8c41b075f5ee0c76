"""The CRF head: exact inference against brute-force enumeration, mean-field against the softmax head, the
scheme's forbidden transitions, and the CRF inside the early-exit engine (what it really computed, recorded by
hooks and traces, against an independent forward pass)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from earlytag.engine import Engine, ExitConfig
from earlytag.errors import ConfigError
from earlytag.model import crf
from earlytag.model.heads import CRFHead, SoftmaxHead

from .conftest import need_module, tiny_model
from .test_engine import SENTENCES, batch_of

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def random_case(seed: int, b: int = 4, w: int = 5, c: int = 3, per_position: bool = False):
    g = torch.Generator().manual_seed(seed)
    emit = torch.randn(b, w, c, generator=g) * 2
    lengths = torch.randint(1, w + 1, (b,), generator=g)
    lengths[0] = w
    mask = torch.arange(w)[None] < lengths[:, None]
    if per_position:
        trans = torch.randn(b, w, c, c, generator=g)
        start, end = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    else:
        trans = torch.randn(c, c, generator=g)
        start, end = torch.randn(c, generator=g), torch.randn(c, generator=g)
    return emit, mask, trans, start, end


def brute_force(emit, mask, trans, start, end, row):
    """Every label sequence of sentence ``row`` with its score, by explicit sums (no shared code)."""
    n, c = int(mask[row].sum()), emit.shape[2]
    tr = (lambda t: trans) if trans.dim() == 2 else (lambda t: trans[row, t])
    st = start if start.dim() == 1 else start[row]
    en = end if end.dim() == 1 else end[row]
    scores = {}
    for path in itertools.product(range(c), repeat=n):
        s = float(st[path[0]]) + float(en[path[-1]]) + sum(float(emit[row, t, path[t]]) for t in range(n))
        s += sum(float(tr(t)[path[t - 1], path[t]]) for t in range(1, n))
        scores[path] = s
    return scores


@pytest.mark.parametrize("per_position", [False, True], ids=["shared", "per-position"])
@pytest.mark.parametrize("seed", range(4))
def test_exact_inference_equals_brute_force(seed, per_position):
    emit, mask, trans, start, end = random_case(seed, per_position=per_position)
    log_z = crf.log_partition(emit, mask, trans, start, end)
    decoded = {f.__name__: f(emit, mask, trans, start, end) for f in (crf.viterbi_numpy, crf.viterbi_torch)}
    marg = crf.marginals(emit, mask, trans, start, end)
    for row in range(emit.shape[0]):
        scores = brute_force(emit, mask, trans, start, end, row)
        n = int(mask[row].sum())
        values = torch.tensor(list(scores.values()), dtype=torch.float64)
        assert float(log_z[row]) == pytest.approx(float(torch.logsumexp(values, 0)), abs=1e-4)
        top = max(scores, key=scores.get)
        for name, (tags, best) in decoded.items():  # both implementations of Viterbi
            assert tuple(tags[row, :n].tolist()) == top, name
            assert tags[row, n:].eq(0).all(), name
            assert float(best[row]) == pytest.approx(scores[top], abs=1e-4), name
        probs = torch.zeros(n, emit.shape[2], dtype=torch.float64)
        for path, s in scores.items():
            for t, lab in enumerate(path):
                probs[t, lab] += torch.exp(torch.tensor(s, dtype=torch.float64) - torch.logsumexp(values, 0))
        assert torch.allclose(marg[row, :n].double(), probs, atol=1e-5)
        assert marg[row, n:].eq(0).all()
        # the gold-path score and the NLL of the best path
        path = torch.tensor(list(top) + [0] * (emit.shape[1] - n))[None]
        own = [x[row:row + 1] for x in (trans, start, end)] if per_position else (trans, start, end)
        sc = crf.path_score(emit[row:row + 1], path, mask[row:row + 1], *own)
        assert float(sc[0]) == pytest.approx(scores[top], abs=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_exact_inference_equals_a_reference_crf_library(seed):
    """Against pytorch-crf (a test oracle only) at lengths brute force cannot reach: the log-likelihood of the
    gold labels (our -nll, its forward) and the Viterbi path of every sentence, sentences of 1 to 60 words
    padded together, 9 labels."""
    torchcrf = need_module("torchcrf")
    emit, mask, trans, start, end = random_case(seed, b=6, w=60, c=9)
    ref = torchcrf.CRF(9, batch_first=True)
    with torch.no_grad():
        ref.transitions.copy_(trans)  # [i, j]: label j after label i, as ours
        ref.start_transitions.copy_(start)
        ref.end_transitions.copy_(end)
        tags = torch.randint(0, 9, mask.shape, generator=torch.Generator().manual_seed(seed))
        expect = ref(emit, tags, mask, reduction="none")  # (B,) log-likelihood
        assert torch.allclose(-crf.nll(emit, tags, mask, trans, start, end), expect, atol=1e-3)
        for viterbi in (crf.viterbi_numpy, crf.viterbi_torch):
            paths, _ = viterbi(emit, mask, trans, start, end)
            for row, path in enumerate(ref.decode(emit, mask)):
                assert paths[row, : len(path)].tolist() == path, viterbi.__name__
                assert paths[row, len(path):].eq(0).all(), viterbi.__name__


def test_viterbi_runs_in_numpy_on_cpu_without_gradients(monkeypatch):
    """Which implementation really ran (spied): NumPy for CPU tensors without gradients, torch when a tensor
    needs them; the same labels and scores from both, with per-position transitions and per-sentence start/end
    scores too, in float32 and float64."""
    ran = []
    for name in ("viterbi_numpy", "viterbi_torch"):
        real = getattr(crf, name)
        monkeypatch.setattr(crf, name, lambda *a, real=real, name=name: ran.append(name) or real(*a))
    for per_position in (False, True):
        for dtype in (torch.float32, torch.float64):
            emit, mask, trans, start, end = (x.to(dtype) if x.is_floating_point() else x
                                             for x in random_case(3, b=4, w=9, per_position=per_position))
            ran.clear()
            tags, best = crf.viterbi(emit, mask, trans, start, end)
            assert ran == ["viterbi_numpy"] and best.dtype == dtype
            emit.requires_grad_(True)
            again, best_t = crf.viterbi(emit, mask, trans, start, end)
            assert ran == ["viterbi_numpy", "viterbi_torch"]
            assert torch.equal(tags, again)
            assert torch.allclose(best, best_t.detach(), atol=1e-5)


def test_meanfield_update_by_hand():
    """One update on a 3-word sentence, computed with explicit sums."""
    emit, mask, trans, start, end = random_case(7, b=1, w=3, c=3)
    # the start: the softmax of emission + boundary scores
    first = emit[0].clone()
    first[0] += start
    first[2] += end
    q0 = first.softmax(-1)
    expect = []
    for t in range(3):
        s = first[t].clone()
        for j in range(3):
            if t > 0:
                s[j] += sum(q0[t - 1, i] * trans[i, j] for i in range(3))
            if t < 2:
                s[j] += sum(trans[j, k] * q0[t + 1, k] for k in range(3))
        expect.append(s.log_softmax(-1))
    got = crf.meanfield(emit, mask, trans, start, end, iters=1)[0]
    assert torch.allclose(got, torch.stack(expect), atol=1e-5)


@pytest.mark.parametrize("per_position", [False, True], ids=["shared", "per-position"])
def test_meanfield_of_a_padded_batch_is_each_sentence_alone(per_position):
    """Sentences of different lengths in one batch: every word's mean-field marginals are those of its sentence
    run alone (padding sends no message to a sentence's last word; the end score lands on that word)."""
    emit, mask, trans, start, end = random_case(13, b=6, w=8, c=4, per_position=per_position)
    assert not mask.all()  # some sentences are padded
    for iters in (0, 1, 3):
        batch = crf.meanfield(emit, mask, trans, start, end, iters)  # (B, W, C)
        for row in range(emit.shape[0]):
            n = int(mask[row].sum())
            own = (trans[row:row + 1, :n], start[row:row + 1], end[row:row + 1]) if per_position \
                else (trans, start, end)
            alone = crf.meanfield(emit[row:row + 1, :n], mask[row:row + 1, :n], *own, iters)
            assert torch.allclose(batch[row, :n], alone[0], atol=1e-5), (iters, row)


@pytest.mark.parametrize("per_position", [False, True], ids=["shared", "per-position"])
def test_decoding_probabilities_are_the_meanfield_marginals(per_position):
    """meanfield_probs (what decoding reads) against meanfield_labels_first (what training reads): the same
    marginals without the log, the labels of max with the first index on ties, the best label's probability."""
    emit, mask, trans, start, end = random_case(11, b=5, w=9, c=4, per_position=per_position)
    emit[0, 3, 1] = emit[0, 3, 2] = 30.0  # a tie (before any update: the emission scores of a middle word)
    for iters in (0, 1, 3):
        logq = crf.meanfield_labels_first(emit, mask, trans, start, end, iters)  # (B, C, W)
        best, labels, probs = crf.meanfield_probs(emit, mask, trans, start, end, iters)
        assert torch.allclose(probs, logq.exp(), atol=1e-6)
        ref = logq.max(1)
        assert torch.equal(labels, ref.indices)
        assert torch.allclose(best, ref.values.exp(), atol=1e-6)
        assert torch.allclose(probs.gather(1, labels.unsqueeze(1)).squeeze(1), best, atol=1e-6)
        if iters == 0:
            assert labels[0, 3] == 1 and best[0, 3] == pytest.approx(0.5, abs=1e-6)


def test_the_labels_first_copy_is_exact():
    """The CPU's product with the identity (crf._labels_first) copies every emission bit for bit, across a wide
    range of magnitudes, into new memory."""
    g = torch.Generator().manual_seed(0)
    emit = torch.randn(3, 17, 9, generator=g) * torch.logspace(-30, 30, 9)
    out = crf._labels_first(emit)
    assert out.is_contiguous() and out.data_ptr() != emit.data_ptr()
    assert torch.equal(out, emit.transpose(1, 2))


def test_meanfield_without_transitions_is_the_softmax():
    emit, mask, _, _, _ = random_case(3)
    c = emit.shape[2]
    zeros = torch.zeros(c, c), torch.zeros(c), torch.zeros(c)
    for iters in (0, 1, 5):
        got = crf.meanfield(emit, mask, *zeros, iters=iters)
        assert torch.allclose(got[mask], emit.log_softmax(-1)[mask], atol=1e-6)


def test_meanfield_approaches_the_exact_marginals_on_weak_couplings():
    emit, mask, trans, start, end = random_case(5, b=8, w=6, c=4)
    exact = crf.marginals(emit, mask, trans * 0.1, start, end)
    errors = [float((crf.meanfield(emit, mask, trans * 0.1, start, end, m).exp() * mask[..., None] - exact).abs().max())
              for m in (0, 3)]
    assert errors[1] < errors[0] / 3


def test_crf_loss_without_transitions_is_twice_the_cross_entropy():
    """With zero transitions the chain factorises: NLL per word = cross-entropy, and mean-field = softmax."""
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(3, 6, 5, generator=g) for _ in range(3)]
    labels = torch.randint(0, 5, (3, 6), generator=g)
    labels[1, 4:] = -100
    labels[2, 2:] = -100
    head = CRFHead(list(LABELS), "ner", "iob2", 3)
    loss, per_layer = head.loss(logits, labels)
    soft, soft_layers = SoftmaxHead().loss(logits, labels)
    assert torch.allclose(per_layer, 2 * soft_layers, atol=1e-5)
    assert float(loss.detach()) == pytest.approx(2 * float(soft), abs=1e-5)
    with pytest.raises(ConfigError, match="flooding"):
        head.loss(logits, labels, flood=torch.zeros(3, 3, 6))
    holes = labels.clone()
    holes[0, 2] = -100
    with pytest.raises(ConfigError, match="labels"):
        head.loss(logits, holes)


def test_scheme_constraints():
    allowed, first, last = crf.allowed(list(LABELS), "ner", "iob2")
    ix = {lab: i for i, lab in enumerate(LABELS)}
    assert not allowed[ix["O"], ix["I-PER"]] and not allowed[ix["B-LOC"], ix["I-PER"]]
    assert allowed[ix["B-PER"], ix["I-PER"]] and allowed[ix["I-PER"], ix["I-PER"]] and allowed[ix["I-PER"], ix["O"]]
    assert not first[ix["I-LOC"]] and first[ix["B-LOC"]] and last.all()
    iobes = ["O", "B-X", "I-X", "E-X", "S-X"]
    allowed, first, last = crf.allowed(iobes, "ner", "iobes")
    assert allowed[1, 2] and allowed[1, 3] and not allowed[1, 0] and not allowed[3, 2] and allowed[3, 4]
    assert first.tolist() == [True, True, False, False, True] and last.tolist() == [True, False, False, True, True]
    bmes = ["B", "E", "M", "S"]
    allowed, first, last = crf.allowed(bmes, "cws", None)
    assert allowed[0, 2] and allowed[0, 1] and not allowed[0, 3] and not allowed[3, 1] and allowed[1, 0]
    assert first.tolist() == [True, False, False, True] and last.tolist() == [False, True, False, True]
    allowed, first, last = crf.allowed(["NOUN", "VERB"], "pos", None)
    assert allowed.all() and first.all() and last.all()


def test_viterbi_never_breaks_the_scheme_even_when_emissions_ask_for_it():
    head = CRFHead(list(LABELS), "ner", "iob2", 2)
    emit = torch.full((1, 4, 5), -5.0)
    emit[0, 0, 2] = emit[0, 1, 0] = emit[0, 2, 4] = emit[0, 3, 0] = 5.0  # I-PER first, I-LOC after O
    mask = torch.ones(1, 4, dtype=torch.bool)
    exit_layer = torch.ones(1, 4, dtype=torch.long)
    pred, _ = head.decode(emit, mask, exit_layer)
    tags = [LABELS[i] for i in pred[0].tolist()]
    assert tags[0] != "I-PER" and not (tags[1] == "O" and tags[2].startswith("I-"))


def forbid(trans: torch.Tensor) -> torch.Tensor:
    """A copy of random transitions with a few forbidden steps (as the tag scheme's)."""
    trans = trans.clone()
    trans[..., 0, 2] = trans[..., 1, 1] = crf.NEG
    return trans



def broken_next_to(path, t, trans, start, end, row) -> bool:
    """Whether a forbidden step leads into or out of word ``t`` of the labels ``path`` of sentence ``row``."""
    n = len(path)
    tr = (lambda i: trans) if trans.dim() == 2 else (lambda i: trans[row, i])
    steps = [float(tr(i)[path[i - 1], path[i]]) for i in (t, t + 1) if 0 < i < n]
    if t == 0:
        steps.append(float(start[row][path[0]] if start.dim() == 2 else start[path[0]]))
    if t == n - 1:
        steps.append(float(end[row][path[-1]] if end.dim() == 2 else end[path[-1]]))
    return any(s < crf.NEG / 2 for s in steps)


REFINERS = [("shared", "refine_runs_numpy"), ("shared", "refine_runs_torch"), ("per-position", "refine_runs_torch")]


@pytest.mark.parametrize("transitions, refiner", REFINERS, ids=[f"{t}-{r}" for t, r in REFINERS])
@pytest.mark.parametrize("seed", range(4))
def test_run_refinement_is_exact_between_anchors(seed, transitions, refiner):
    """From any labels (random ones, or mean-field's) with random confidences: the sure words (at least ``below``,
    no forbidden step next to them) keep their labels, and the sentence gets the best labels among all that keep
    them (brute force); never a lower path score than it started with, never a forbidden step; 0 on padding;
    ``below`` 1: Viterbi's labels. Each implementation (NumPy: one transition matrix only)."""
    refine_runs = getattr(crf, refiner)
    emit, mask, trans, start, end = random_case(seed, b=5, w=7, per_position=transitions == "per-position")
    trans = forbid(trans)
    g = torch.Generator().manual_seed(seed + 10)
    best, _ = crf.viterbi(emit, mask, trans, start, end)
    inits = [torch.randint(0, 3, mask.shape, generator=g),
             crf.best_labels(crf.meanfield_labels_first(emit, mask, trans, start, end, 1), 1)[1]]
    for init in inits:
        confidence = torch.rand(mask.shape, generator=g)
        out = refine_runs(emit, mask, trans, start, end, init, confidence, 0.5)
        before = crf.path_score(emit, init, mask, trans, start, end)
        after = crf.path_score(emit, out, mask, trans, start, end)
        assert (after >= before - 1e-4).all() and (after > crf.NEG / 2).all()
        assert (out[~mask] == 0).all()
        for row in range(mask.shape[0]):
            n = int(mask[row].sum())
            path = tuple(init[row, :n].tolist())
            scores = brute_force(emit, mask, trans, start, end, row)

            anchors = [t for t in range(n)
                       if confidence[row, t] >= 0.5 and not broken_next_to(path, t, trans, start, end, row)]
            assert all(out[row, t] == init[row, t] for t in anchors)
            keeping = {p: s for p, s in scores.items() if all(p[t] == path[t] for t in anchors)}
            assert scores[tuple(out[row, :n].tolist())] == pytest.approx(max(keeping.values()), abs=1e-4)
        assert torch.equal(refine_runs(emit, mask, trans, start, end, init, confidence, 1.0), best)


def spy_run_viterbi(monkeypatch, refiner: str) -> list:
    """Record what the Viterbi over runs really received from ``refiner``, as ``(emit (R, K, C), mask (R, K),
    (trans, start (R, C), end (R, C)))``: torch's through :func:`crf.viterbi`, NumPy's through the labels-first
    core :func:`crf._viterbi_np` (its ``(K, C, R)`` arrays and last positions read back into that form)."""
    seen = []
    if refiner == "refine_runs_torch":
        real = crf.viterbi
        monkeypatch.setattr(crf, "viterbi",
                            lambda e, m, *a: seen.append((e.clone(), m.clone(), a)) or real(e, m, *a))
    else:
        core = crf._viterbi_np

        def record(em, tr, st, en, lastpos):
            k = em.shape[0]
            seen.append((torch.from_numpy(em.transpose(2, 0, 1).copy()),
                         torch.arange(k).unsqueeze(0) <= torch.from_numpy(lastpos).unsqueeze(1),
                         (torch.from_numpy(tr.copy()), torch.from_numpy(st.T.copy()), torch.from_numpy(en.T.copy()))))
            return core(em, tr, st, en, lastpos)
        monkeypatch.setattr(crf, "_viterbi_np", record)
    return seen


@pytest.mark.parametrize("refiner", ["refine_runs_numpy", "refine_runs_torch"])
def test_run_refinement_decodes_only_the_doubtful_runs(monkeypatch, refiner):
    """What Viterbi really received (spied): nothing when every word is sure and no step is forbidden; else one
    row per run of doubtful words, as long as the run, the anchors' transitions as its start/end scores. NumPy
    decides a run of one word without the loop (its best label between its anchors): only longer runs reach it."""
    refine_runs = getattr(crf, refiner)
    emit, mask, trans, start, end = random_case(0, b=2, w=12)
    mask[:] = True
    trans = forbid(trans)
    best, _ = crf.viterbi(emit, mask, trans, start, end)
    seen = spy_run_viterbi(monkeypatch, refiner)
    sure = torch.ones(mask.shape)
    assert torch.equal(refine_runs(emit, mask, trans, start, end, best, sure, 0.9), best)
    assert seen == []  # a valid path and every word sure: nothing decoded
    doubt = sure.clone()
    doubt[1, 5] = doubt[1, 6] = 0.5  # one run of two words
    doubt[0, 0] = 0.5  # a run at a sentence's start
    wrong = best.clone()
    wrong[1, 5] = (best[1, 5] + 1) % 3
    # the one-word run gets a wrong label too, one whose step to its neighbour the scheme allows (forbid: 0 -> 2)
    wrong[0, 0] = next(x for x in range(3) if x != best[0, 0] and not (x == 0 and best[0, 1] == 2))
    out = refine_runs(emit, mask, trans, start, end, wrong, doubt, 0.9)
    assert torch.equal(out, best)
    (e, m, (tr, st, en)), = seen
    if refiner == "refine_runs_numpy":  # the one-word run was decided without the loop
        assert m.tolist() == [[True, True]] and torch.equal(e[0], emit[1, 5:7])
        assert torch.equal(st[0], trans[best[1, 4]]) and torch.equal(en[0], trans[:, best[1, 7]])
    else:
        assert m.tolist() == [[True, False], [True, True]]
        assert torch.equal(e[0, 0], emit[0, 0]) and torch.equal(e[1], emit[1, 5:7])
        assert torch.equal(st[0], start) and torch.equal(st[1], trans[best[1, 4]])  # the sentence's start; anchor 4
        assert torch.equal(en[0], trans[:, best[0, 1]]) and torch.equal(en[1], trans[:, best[1, 7]])
    seen.clear()
    broken = best.clone()
    broken[0, 3], broken[0, 4] = 0, 2  # a forbidden step (0 -> 2) between two "sure" words
    refine_runs(emit, mask, trans, start, end, broken, sure, 0.9)
    (e, m, _), = seen
    assert m.tolist() == [[True, True]] and torch.equal(e[0], emit[0, 3:5])


@pytest.mark.parametrize("refiner", ["refine_runs_numpy", "refine_runs_torch"])
def test_a_batch_whose_runs_cost_more_gets_viterbi_over_the_whole_batch(monkeypatch, refiner):
    """``whole_if_cheaper``: where most words doubt (long runs, more rows than sentences) Viterbi really receives
    the whole batch (spied) and the labels are Viterbi's; where a few words doubt it receives only their runs.
    The cost rule itself: runs x their padded length against sentences x their length, plus a fixed step cost."""
    refine_runs = getattr(crf, refiner)
    emit, mask, trans, start, end = random_case(2, b=4, w=40)
    trans = forbid(trans)
    best, _ = crf.viterbi(emit, mask, trans, start, end)
    seen = []
    real = crf.viterbi
    monkeypatch.setattr(crf, "viterbi", lambda e, m, *a: seen.append(e.shape) or real(e, m, *a))
    if refiner == "refine_runs_numpy":  # its runs go to the NumPy core, not to viterbi
        core = crf._viterbi_np
        monkeypatch.setattr(crf, "_viterbi_np", lambda em, *a: seen.append(("runs", em.shape[2], em.shape[0]))
                            or core(em, *a))
    doubt = torch.zeros(mask.shape)  # every word doubts: one run per sentence, as long as it
    out = refine_runs(emit, mask, trans, start, end, best.roll(1, 1), doubt, 0.9, whole_if_cheaper=True)
    numpy = refiner == "refine_runs_numpy"  # (viterbi on a CPU runs the same NumPy core: b rows, w steps)
    assert seen == [emit.shape] + ([("runs", 4, 40)] if numpy else []) and torch.equal(out, best)
    seen.clear()
    sure = torch.ones(mask.shape)
    sure[0, 3] = sure[2, 10] = 0.0  # two runs of one word
    wrong = best.clone()
    wrong[0, 3] = (best[0, 3] + 1) % 3
    out = refine_runs(emit, mask, trans, start, end, wrong, sure, 0.9, whole_if_cheaper=True)
    # two short runs (a word, and its neighbour where the wrong label breaks the scheme), never the whole batch;
    # NumPy decides runs of one word without the loop, so it may see one run or none
    assert emit.shape not in seen and len(seen) <= 1 and out[0, 3] == best[0, 3]
    for call in seen:
        rows, steps = call[1:] if numpy else call[:2]
        assert rows <= 2 and steps <= 3 and (numpy or rows == 2)
    # one run of 60 words and 32 runs of one word: the rule counts every run (33, not the one long run alone, which
    # would keep the runs), so both implementations send this batch to Viterbi and give the same labels
    emit, mask, trans, start, end = random_case(5, b=2, w=64)
    mask[:] = True
    best, _ = crf.viterbi(emit, mask, trans, start, end)
    sure = torch.ones(mask.shape)
    sure[0, :60] = 0.0
    sure[1, 1::2] = 0.0
    assert crf._runs_cost_more(60, 33, 64, 2, 3) and not crf._runs_cost_more(60, 1, 64, 2, 3)
    seen.clear()
    out = refine_runs(emit, mask, trans, start, end, best, sure, 0.9, whole_if_cheaper=True)
    assert seen[0] == emit.shape and torch.equal(out, best)
    assert crf._runs_cost_more(40, 4, 40, 4, 7) and not crf._runs_cost_more(1, 2, 40, 4, 7)
    assert crf._runs_cost_more(50, 3045, 1024, 32, 7)  # random emissions, 1,024 words: K=50 over 3,045 runs
    assert not crf._runs_cost_more(6, 479, 1024, 32, 7)  # the model's own: K=6 over 479 runs


def test_run_refinement_runs_in_numpy_on_cpu_with_one_matrix(monkeypatch):
    """Which implementation really ran (spied): NumPy for CPU tensors without gradients and one transition
    matrix, torch for per-position transitions or when a tensor needs gradients; the same labels from all."""
    ran = []
    for name in ("refine_runs_numpy", "refine_runs_torch"):
        real = getattr(crf, name)
        monkeypatch.setattr(crf, name, lambda *a, real=real, name=name: ran.append(name) or real(*a))
    for per_position in (False, True):
        emit, mask, trans, start, end = random_case(5, b=4, w=9, per_position=per_position)
        trans = forbid(trans)
        init = crf.best_labels(crf.meanfield_labels_first(emit, mask, trans, start, end, 1), 1)[1]
        confidence = torch.rand(mask.shape, generator=torch.Generator().manual_seed(1))
        ran.clear()
        out = crf.refine_runs(emit, mask, trans, start, end, init, confidence, 0.6)
        assert ran == ["refine_runs_torch" if per_position else "refine_runs_numpy"]
        emit.requires_grad_(True)
        again = crf.refine_runs(emit, mask, trans, start, end, init, confidence, 0.6)
        assert ran[-1] == "refine_runs_torch" and torch.equal(out, again)


def test_blockwise_head_refines_long_batches_and_hands_short_ones_to_viterbi(monkeypatch):
    head = CRFHead(list(LABELS), "ner", "iob2", 2, {"decode": "blockwise", "blockwise_from": 6})
    with torch.no_grad():
        head.transitions.copy_(torch.randn(head.transitions.shape, generator=torch.Generator().manual_seed(0)))
    calls = []
    real = crf.refine_runs
    monkeypatch.setattr(crf, "refine_runs", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    g = torch.Generator().manual_seed(1)
    for w in (5, 6, 9):
        emit = torch.randn(3, w, 5, generator=g) * 2
        mask = torch.ones(3, w, dtype=torch.bool)
        layer = torch.ones(3, w, dtype=torch.long)
        pred, _ = head.decode(emit, mask, layer)
        trans, start, end = head.params(1, constrained=True)
        score = crf.path_score(emit, pred, mask, trans, start, end)
        mf = crf.best_labels(crf.meanfield_labels_first(emit, mask, *head.params(1), 3), 1)[1]
        assert (score >= crf.path_score(emit, mf, mask, trans, start, end) - 1e-4).all()
        assert (score > crf.NEG / 2).all()  # never a forbidden step
        if w < 6:
            assert torch.equal(pred, crf.viterbi(emit, mask, trans, start, end)[0])
    assert [s[1] for s in calls] == [6, 9]


def test_per_layer_transitions_take_the_deeper_word():
    head = CRFHead(list(LABELS), "ner", "iob2", 3, {"transitions": "per-layer"})
    with torch.no_grad():
        for i in range(3):
            head.transitions[i].fill_(float(i))
            head.start[i].fill_(10.0 + i)
            head.end[i].fill_(20.0 + i)
    exit_layer = torch.tensor([[0, 2, 1, 0, -1]])
    mask = exit_layer >= 0
    trans, start, end = head._params_at(exit_layer, mask, constrained=False)
    assert trans.shape == (1, 5, 5, 5)
    assert trans[0, 1:4, 1, 1].tolist() == [2.0, 2.0, 1.0]  # steps 0->1, 1->2, 2->3: the deeper word's layer
    assert start[0, 0] == 10.0 and end[0, 0] == 20.0  # first word at layer 0, last real word at layer 0


def crf_model(seed: int = 0, **settings):
    model = tiny_model(head="crf", crf=settings or None, seed=seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        model.head.transitions.copy_(torch.randn(model.head.transitions.shape, generator=g) * 2)
        model.head.start.copy_(torch.randn(model.head.start.shape, generator=g))
        for head in model.heads:  # sharper emissions than a random init gives, so that words differ
            head.linear.weight.mul_(8)
    return model


@pytest.mark.parametrize("decode", ["viterbi", "meanfield", "blockwise"])
@pytest.mark.parametrize("transitions", ["shared", "per-layer"])
def test_engine_at_threshold_zero_decodes_the_full_forward(tokenizer, decode, transitions):
    # blockwise with every word decoded again: exactly Viterbi's labels
    model = crf_model(transitions=transitions, decode=decode,
                      **({"block_below": 1.0, "blockwise_from": 0} if decode == "blockwise" else {}))
    batch = batch_of(tokenizer, SENTENCES)
    with torch.no_grad():
        last = model(batch.input_ids, batch.attention_mask, batch.word_pos).logits[-1]
    layer = torch.full(batch.word_pos.shape, model.num_layers - 1)
    expect, score = model.head.decode(last, batch.word_mask, layer)
    for cfg in (ExitConfig(), ExitConfig(policy="token", threshold=0.0)):
        out = Engine(model).run(batch, cfg)
        assert torch.equal(out.pred[batch.word_mask], expect[batch.word_mask])
        assert torch.allclose(out.score[batch.word_mask], score[batch.word_mask], atol=1e-5)
    if decode != "meanfield":
        tr, st, en = model.head.params(model.num_layers - 1, constrained=True)
        tags, _ = crf.viterbi(last, batch.word_mask, tr, st, en)
        assert torch.equal(out.pred[batch.word_mask], tags[batch.word_mask])


@pytest.mark.parametrize("uncertainty", ["meanfield", "exact", "emission"])
def test_exits_read_the_layers_marginals(tokenizer, uncertainty):
    """The uncertainty the policy saw after each layer (the engine's trace) is the normalised entropy of that layer's
    CRF marginals over the emissions of an independent full forward pass (nobody exits at threshold 0)."""
    model = crf_model(uncertainty=uncertainty)
    batch = batch_of(tokenizer, SENTENCES)
    out = Engine(model).run(batch, ExitConfig(policy="token", threshold=0.0), trace=True)
    with torch.no_grad():
        logits = model(batch.input_ids, batch.attention_mask, batch.word_pos).logits
    m = batch.word_mask
    for layer, emit in enumerate(logits):
        tr, st, en = model.head.params(layer, constrained=uncertainty == "exact")
        if uncertainty == "meanfield":
            logq = crf.meanfield(emit, m, tr, st, en, model.head.meanfield_iters)
        elif uncertainty == "exact":
            logq = crf.marginals(emit, m, tr, st, en).clamp(min=1e-30).log()
        else:
            logq = emit.log_softmax(-1)
        assert torch.allclose(out.trace[:, layer][m], crf.normalised_entropy(logq)[m], atol=1e-5)
    if uncertainty != "emission":  # the transitions matter: the emission softmax alone says something else
        emission = crf.normalised_entropy(logits[0].log_softmax(-1))
        assert not torch.allclose(out.trace[:, 0][m], emission[m], atol=1e-3)


def test_mixed_exits_decode_each_word_from_its_exit_layer(tokenizer):
    """Words exit at different layers; the labels are the CRF decode of each word's emission at its exit layer, as
    the model's own forward computes them with the halted words' states frozen (word_exit)."""
    model = crf_model()
    batch = batch_of(tokenizer, SENTENCES)
    probe = Engine(model).run(batch, ExitConfig(policy="token", threshold=0.0), trace=True)
    first = probe.trace[:, 0][batch.word_mask].sort().values
    mid = len(first) // 2
    tau = float(first[mid - 1] + first[mid]) / 2
    cfg = ExitConfig(policy="token", threshold=tau, window=0, upper_multiplier=1.0)
    out = Engine(model).run(batch, cfg)
    exits = out.exit_layer[batch.word_mask]
    assert exits.min() == 0 and exits.max() > 0  # really mixed
    with torch.no_grad():
        logits = model(batch.input_ids, batch.attention_mask, batch.word_pos, word_exit=out.exit_layer.clamp(min=0),
                       token_word=batch.token_word).logits
    stacked = torch.stack(logits, 1)  # (B, L, W, C)
    e = out.exit_layer.clamp(min=0)
    emit = stacked.gather(1, e[:, None, :, None].expand(-1, 1, -1, stacked.shape[-1])).squeeze(1)
    expect, _ = model.head.decode(emit, batch.word_mask, out.exit_layer)
    assert torch.equal(out.pred[batch.word_mask], expect[batch.word_mask])
    # refill across batches and batch composition do not change a sentence's result
    outs = Engine(model, refill_tokens=10 ** 6).run_many([batch_of(tokenizer, SENTENCES[:2]),
                                                         batch_of(tokenizer, SENTENCES[2:])], cfg)
    rows = [(o, r) for o in outs for r in range(o.pred.shape[0])]
    for row, (o, r) in enumerate(rows):
        n = int(batch.word_mask[row].sum())
        assert o.pred[r, :n].tolist() == out.pred[row, :n].tolist()
        assert o.exit_layer[r, :n].tolist() == out.exit_layer[row, :n].tolist()


def test_zero_transitions_behave_as_the_softmax_head(tokenizer):
    """A CRF with zero transitions and mean-field decoding is the softmax head: same labels, scores and exits."""
    soft = tiny_model(seed=3)
    model = tiny_model(seed=3, head="crf", crf={"decode": "meanfield"})
    model.load_state_dict(soft.state_dict(), strict=False)
    batch = batch_of(tokenizer, SENTENCES)
    probe = Engine(soft).run(batch, ExitConfig(policy="token", threshold=0.0), trace=True)
    first = probe.trace[:, 0][batch.word_mask].sort().values
    tau = float(first[len(first) // 2 - 1] + first[len(first) // 2]) / 2
    cfg = ExitConfig(policy="token", threshold=tau, window=1)
    a, b = Engine(soft).run(batch, cfg), Engine(model).run(batch, cfg)
    assert torch.equal(a.exit_layer, b.exit_layer)
    assert torch.equal(a.pred[batch.word_mask], b.pred[batch.word_mask])
    assert torch.allclose(a.score[batch.word_mask], b.score[batch.word_mask], atol=1e-5)


def test_crf_refuses_the_rescore_rule(tokenizer):
    model = crf_model()
    with pytest.raises(ConfigError, match="halted"):
        Engine(model).run(batch_of(tokenizer, SENTENCES), ExitConfig(policy="token", threshold=0.1, halted="rescore"))


@pytest.mark.parametrize("bad, field", [({"decode": "beam"}, "crf.decode"), ({"meanfield_iters": -1}, "crf.meanfield_iters"),
                                        ({"transitions": "some"}, "crf.transitions"), ({"colour": 1}, "crf.colour"),
                                        ({"block_below": 2}, "crf.block_below"),
                                        ({"blockwise_from": -1}, "crf.blockwise_from")])
def test_bad_crf_settings_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_model(head="crf", crf=bad)


def test_decoding_options_refused_on_a_softmax_model(tokenizer):
    from earlytag import Tagger

    with pytest.raises(ConfigError, match="softmax head"):
        Tagger(tiny_model(), tokenizer, decode="meanfield")


def test_every_cli_verb_with_a_crf_model(capsys, tmp_path, tiny_encoder_dirs, shared_data, monkeypatch):
    from earlytag import Tagger

    from .test_cli import run

    monkeypatch.setenv("EARLYTAG_DATA", str(shared_data))
    model = tmp_path / "crf"
    code, out, err = run(capsys, "train", "--train", "uner-en-ewt:train", "--dev", "uner-en-ewt:dev", "--task", "ner",
                         "--encoder", tiny_encoder_dirs["bert"], "--output", model, "--epochs", 1, "--head", "crf",
                         "--crf-transitions", "per-layer", "--meanfield-iters", 2, "--train-limit", 64,
                         "--dev-limit", 32, "--quiet")
    assert code == 0, err
    config = json.loads((model / "config.json").read_text())["earlytag"]
    assert config["head"] == "crf" and config["crf"]["transitions"] == "per-layer"
    assert "--head crf" in config["training"]["command"]  # the command line, not the verb alone
    assert config["crf"]["meanfield_iters"] == 2

    metrics = tmp_path / "m.json"
    code, out, err = run(capsys, "evaluate", model, "uner-en-ewt:dev", "--exit", "token", "--threshold", "0.2",
                         "--decode", "meanfield", "--meanfield-iters", 4, "--json", metrics, "--per-layer")
    assert code == 0, err
    result = json.loads(metrics.read_text())
    assert "decode meanfield M=4" in result["runtime"]["head"] and len(result["per_layer"]) == 3

    text = tmp_path / "in.txt"
    text.write_text("Angela Merkel visited Paris .\nHi\n", encoding="utf-8")
    outputs = {}
    for decode in ("viterbi", "meanfield", "blockwise"):
        code, out, err = run(capsys, "predict", model, text, "--decode", decode, "--crf-uncertainty", "exact")
        assert code == 0, err
        outputs[decode] = [json.loads(line) for line in out.splitlines()]
        assert len(outputs[decode]) == 2
    code, out, err = run(capsys, "calibrate", model, "uner-en-ewt:dev", "--target-speedup", 1.5, "--limit", 30,
                         "--dry-run", "--decode", "meanfield")
    assert code == 0, err
    code, out, err = run(capsys, "bench", model, "uner-en-ewt:dev", "--out", tmp_path / "bench", "--limit", 30,
                         "--policies", "token", "--grid", "small", "--no-timing", "--decode", "meanfield", "--quiet")
    assert code == 0, err
    assert "meanfield" in json.loads((tmp_path / "bench" / "meta.json").read_text())["head"]

    from fastapi.testclient import TestClient

    from earlytag.serve.app import create_app

    with TestClient(create_app(str(model), load_in_background=False, load={"decode": "meanfield"})) as client:
        while client.get("/ready").status_code != 200:
            pass
        body = client.post("/predict", json={"texts": ["Angela Merkel visited Paris ."]}).json()
    served = [t["tag"] for t in body["results"][0]["tokens"]]
    assert served == [t["tag"] for t in outputs["meanfield"][0]["tokens"]]

    # stage 2 on a CRF model: token flooding is refused in one line, the other floodings train
    code, out, err = run(capsys, "train", "--stage", "self-sampling", "--init", model, "--train", "uner-en-ewt:train",
                         "--task", "ner", "--output", tmp_path / "ss", "--epochs", 1, "--train-limit", 32, "--quiet")
    assert code != 0 and "flooding" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "train", "--stage", "self-sampling", "--init", model, "--train", "uner-en-ewt:train",
                         "--task", "ner", "--output", tmp_path / "ss", "--epochs", 1, "--train-limit", 32, "--quiet",
                         "--flooding", "off", "--freeze-epochs", 0)
    assert code == 0, err
    assert Tagger.from_pretrained(tmp_path / "ss").model.head.structured


def test_the_model_card_names_the_crf(tmp_path, tokenizer):
    from earlytag import Tagger

    Tagger(crf_model(transitions="per-layer", decode="meanfield"), tokenizer).save_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text(encoding="utf-8")
    assert "| head | linear-chain CRF (per-layer transitions), decoded by meanfield (mean-field: 3 updates)" in card


def test_best_labels_is_max_with_the_first_index_on_ties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 33, generator=g).log_softmax(1)
    x[0, 2, 5] = x[0, 4, 5] = 10.0  # a tie: the first wins, as with max
    for dim in (1, 2):
        values, indices = crf.best_labels(x, dim)
        ref = x.max(dim)
        assert torch.equal(values, ref.values) and torch.equal(indices, ref.indices)
    assert crf.best_labels(x, 1)[1][0, 5] == 2


def test_ray_actors_load_the_decoding_they_are_given(tmp_path, tokenizer):
    from earlytag import Tagger
    from earlytag.ray_tagging import TaggerPredictor

    Tagger(crf_model(), tokenizer).save_pretrained(tmp_path / "m")
    actor = TaggerPredictor(str(tmp_path / "m"), load={"decode": "meanfield", "meanfield_iters": 1,
                                                       "precision": "bf16"})
    assert actor.tagger.model.head.decode_with == "meanfield" and actor.tagger.model.head.meanfield_iters == 1
    assert actor.tagger.precision == "bf16"


@pytest.mark.parametrize("words", [1, 2, 5])
def test_crf_loss_backward_on_any_sentence_length(words):
    """A batch of one-word sentences trained once the mean-field wrote into its emissions' memory (the transpose
    of a (B, 1, C) tensor is that tensor): the loss must backpropagate at every length."""
    g = torch.Generator().manual_seed(words)
    logits = [torch.randn(4, words, 5, generator=g, requires_grad=True) for _ in range(2)]
    labels = torch.randint(0, 5, (4, words), generator=g)
    head = CRFHead(list(LABELS), "ner", "iob2", 2)
    word_exit = torch.zeros(4, words, dtype=torch.long)
    for exits in (None, word_exit):
        loss, _ = head.loss(logits, labels, exits)
        loss.backward()
        assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in logits)
        assert head.transitions.grad is not None


def test_a_retired_crf_setting_of_an_older_model_is_dropped():
    """block_words (fixed blocks, before runs of doubtful words) in a saved config loads, and is gone."""
    model = tiny_model(head="crf", crf={"block_words": 3, "decode": "blockwise"})
    assert "block_words" not in model.config.crf and model.head.decode_with == "blockwise"


def test_the_engine_s_blockwise_decoding_refines_in_numpy(monkeypatch):
    """Which refinement the head's decoding really ran (spied): NumPy under inference mode, as the engine runs
    (the head's transitions then need no gradients), torch where they do; the same labels from both."""
    head = CRFHead(list(LABELS), "ner", "iob2", 2, {"decode": "blockwise", "blockwise_from": 6})
    with torch.no_grad():
        head.transitions.copy_(torch.randn(head.transitions.shape, generator=torch.Generator().manual_seed(3)))
    ran = []
    for name in ("refine_runs_numpy", "refine_runs_torch"):
        real = getattr(crf, name)
        monkeypatch.setattr(crf, name, lambda *a, real=real, name=name, **k: ran.append(name) or real(*a, **k))
    g = torch.Generator().manual_seed(4)
    emit = torch.randn(3, 9, len(LABELS), generator=g) * 2
    mask = torch.ones(3, 9, dtype=torch.bool)
    layer = torch.ones(3, 9, dtype=torch.long)
    with torch.inference_mode():
        fast, _ = head.decode(emit, mask, layer)
    assert ran == ["refine_runs_numpy"]
    slow, _ = head.decode(emit, mask, layer)
    assert ran == ["refine_runs_numpy", "refine_runs_torch"] and torch.equal(fast, slow)
