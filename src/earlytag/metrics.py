"""Scores: entity-level P/R/F1 (overall and per type), token accuracy, word-level segmentation F1.

Our own implementation; ``tests/test_metrics.py`` checks it against seqeval in both modes. All scores are
fractions in [0, 1].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .data import schemes
from .data.segmentation import word_spans


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def _set_scores(gold: list[set], pred: list[set], key) -> dict:
    tp, n_pred, n_gold = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred):
        for item in g:
            n_gold[key(item)] += 1
        for item in p:
            n_pred[key(item)] += 1
            tp[key(item)] += item in g
    overall = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    per_type = {
        t: {**_prf(tp[t], n_pred[t], n_gold[t]), "support": n_gold[t]}
        for t in sorted(set(n_gold) | set(n_pred))
    }
    return {**overall, "per_type": per_type}


def chunk_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], mode: str = "default",
                 scheme: str = "iob2") -> dict:
    """Entity-level micro precision/recall/F1 and per type (seqeval's ``classification_report`` numbers)."""
    _check_lengths(gold, pred)
    g = [set(schemes.spans(s, mode, scheme)) for s in gold]
    p = [set(schemes.spans(s, mode, scheme)) for s in pred]
    out = _set_scores(g, p, key=lambda span: span[0])
    out["accuracy"] = accuracy(gold, pred)
    return out


def accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    _check_lengths(gold, pred)
    total = sum(len(s) for s in gold)
    right = sum(a == b for gs, ps in zip(gold, pred) for a, b in zip(gs, ps))
    return right / total if total else 0.0


def tag_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Token accuracy (POS); precision/recall/F1 per tag, overall micro (equal to accuracy)."""
    _check_lengths(gold, pred)
    g = [{(i, t) for i, t in enumerate(s)} for s in gold]
    p = [{(i, t) for i, t in enumerate(s)} for s in pred]
    out = _set_scores(g, p, key=lambda item: item[1])
    out["accuracy"] = accuracy(gold, pred)
    return out


def segmentation_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Word-level P/R/F1 of BMES tag sequences (a word counts when both its boundaries are right)."""
    _check_lengths(gold, pred)
    g = [set(word_spans(s)) for s in gold]
    p = [set(word_spans(s)) for s in pred]
    out = _set_scores(g, p, key=lambda _: "WORD")
    out["accuracy"] = accuracy(gold, pred)
    return out


def task_scores(task: str, gold, pred, mode: str = "default") -> dict:
    """Scores for a task with ``score``: F1 for ner/chunk/cws, accuracy for pos."""
    if task in ("ner", "chunk"):
        out = chunk_scores(gold, pred, mode)
        out["score"] = out["f1"]
    elif task == "cws":
        out = segmentation_scores(gold, pred)
        out["score"] = out["f1"]
    else:
        out = tag_scores(gold, pred)
        out["score"] = out["accuracy"]
    return out


def _check_lengths(gold, pred) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
