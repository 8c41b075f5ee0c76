"""Metrics equal seqeval's (default and strict modes); accuracy and segmentation F1."""

from __future__ import annotations

import random
import warnings

import pytest

from earlytag.metrics import accuracy, chunk_scores, segmentation_scores, tag_scores, task_scores

from .conftest import need_module

seqeval_metrics = need_module("seqeval.metrics")


def corrupt(rng, tags):
    out = list(tags)
    for i in range(len(out)):
        if rng.random() < 0.25:
            out[i] = rng.choice(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"])
    return out


def gold_corpus(rng, n=300):
    corpus = []
    for _ in range(n):
        tags = []
        while len(tags) < rng.randint(1, 15):
            if rng.random() < 0.6:
                tags.append("O")
            else:
                t = rng.choice(["PER", "LOC", "ORG"])
                tags += [f"B-{t}"] + [f"I-{t}"] * rng.randint(0, 2)
        corpus.append(tags)
    return corpus


@pytest.mark.parametrize("mode", ["default", "strict"])
def test_chunk_scores_equal_seqeval(mode):
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    rng = random.Random(3)
    gold = gold_corpus(rng)
    pred = [corrupt(rng, g) for g in gold]
    kw = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    ours = chunk_scores(gold, pred, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours["f1"] == pytest.approx(f1_score(gold, pred, **kw))
        assert ours["precision"] == pytest.approx(precision_score(gold, pred, **kw))
        assert ours["recall"] == pytest.approx(recall_score(gold, pred, **kw))
        report = classification_report(gold, pred, output_dict=True, **kw)
    for label in ("PER", "LOC", "ORG"):
        assert ours["per_type"][label]["f1"] == pytest.approx(report[label]["f1-score"])
        assert ours["per_type"][label]["precision"] == pytest.approx(report[label]["precision"])
        assert ours["per_type"][label]["support"] == report[label]["support"]


def test_accuracy_equals_seqeval():
    rng = random.Random(5)
    gold = gold_corpus(rng)
    pred = [corrupt(rng, g) for g in gold]
    assert accuracy(gold, pred) == pytest.approx(seqeval_metrics.accuracy_score(gold, pred))


def test_tag_scores_micro_equals_accuracy():
    gold = [["NOUN", "VERB"], ["DET", "NOUN", "PUNCT"]]
    pred = [["NOUN", "NOUN"], ["DET", "NOUN", "PUNCT"]]
    s = tag_scores(gold, pred)
    assert s["accuracy"] == pytest.approx(0.8) == pytest.approx(s["f1"])
    assert s["per_type"]["VERB"]["recall"] == 0.0
    assert task_scores("pos", gold, pred)["score"] == pytest.approx(0.8)


def test_segmentation_word_f1():
    gold = [["B", "E", "S", "B", "M", "E"]]  # 3 words
    pred = [["B", "E", "B", "E", "M", "E"]]  # words (0,2) right; (2,4), (4,6) wrong
    s = segmentation_scores(gold, pred)
    assert s["precision"] == pytest.approx(1 / 3)
    assert s["recall"] == pytest.approx(1 / 3)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="sentence 0"):
        chunk_scores([["O", "O"]], [["O"]])
