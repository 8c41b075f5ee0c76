"""Tag schemes: conversions round-trip, span extraction matches seqeval in both modes."""

from __future__ import annotations

import random
import warnings

import pytest

from earlytag.data import schemes

from .conftest import need_module


def random_tags(rng, prefixes, n_max=9, types="XY"):
    return ["O" if p == "O" else f"{p}-{rng.choice(types)}" for p in (rng.choice(prefixes) for _ in range(rng.randint(0, n_max)))]


@pytest.mark.parametrize("scheme", ["iob1", "iob2", "iobes", "bilou"])
def test_round_trip_through_every_scheme(scheme):
    rng = random.Random(1)
    for _ in range(2000):
        iob2 = schemes.to_iob2(random_tags(rng, "BIO"), "iob2")  # any B/I/O mix, repaired to valid IOB2
        converted = schemes.from_iob2(iob2, scheme)
        schemes.validate(converted, scheme)
        assert schemes.to_iob2(converted, scheme) == iob2
        assert schemes.spans(converted, "strict", scheme) == schemes.spans(iob2, "strict", "iob2")


def test_examples():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert schemes.from_iob2(tags, "iobes") == ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC"]
    assert schemes.from_iob2(tags, "bilou") == ["B-PER", "L-PER", "O", "U-LOC", "B-LOC", "L-LOC"]
    assert schemes.from_iob2(tags, "iob1") == ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC"]
    assert schemes.spans(tags) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6)]


def test_detect():
    assert schemes.detect_scheme([["B-X", "I-X", "O"]]) == "iob2"
    assert schemes.detect_scheme([["I-X", "B-X", "O"]]) == "iob1"
    assert schemes.detect_scheme([["S-X", "O"]]) == "iobes"
    assert schemes.detect_scheme([["U-X", "O"]]) == "bilou"
    with pytest.raises(schemes.TagError):
        schemes.detect_scheme([["S-X", "U-X"]])


def test_parse_errors_give_index():
    with pytest.raises(schemes.TagError) as info:
        schemes.parse(["O", "B-X", "Q-X"], "iob2")
    assert info.value.index == 2
    with pytest.raises(schemes.TagError):
        schemes.parse(["S-X"], "iob2")
    with pytest.raises(schemes.TagError):
        schemes.parse(["B-"], "auto")


@pytest.mark.parametrize("scheme, prefixes", [("iob2", "BIO"), ("iobes", "BIOES"), ("bilou", "BILOU")])
def test_spans_equal_seqeval(scheme, prefixes):
    seqeval = need_module("seqeval")
    from seqeval.metrics.sequence_labeling import get_entities
    from seqeval.scheme import BILOU, IOB2, IOBES, Tokens

    cls = {"iob2": IOB2, "iobes": IOBES, "bilou": BILOU}[scheme]
    rng = random.Random(7)
    del seqeval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3000):
            tags = random_tags(rng, prefixes)
            assert schemes.spans(tags, "default") == [(t, s, e + 1) for t, s, e in get_entities(tags)]
            assert schemes.spans(tags, "strict", scheme) == [(e.tag, e.start, e.end) for e in Tokens(tags, cls).entities]
