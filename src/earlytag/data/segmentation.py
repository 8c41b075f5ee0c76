"""Chinese word segmentation as character tagging with B/M/E/S.

A word-segmented sentence becomes one "token" per character; ``B`` begins a word, ``M`` continues it,
``E`` ends it and ``S`` is a one-character word. Predictions turn back into words, leniently: a word
ends after ``E``/``S`` or before ``B``/``S``, whatever the sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import Sentence

CWS_TAGS = ("B", "M", "E", "S")


def _characters(words: Sequence[str]):
    """``(index, characters)`` of each word that has any (whitespace inside a word is dropped)."""
    for i, word in enumerate(words):
        cs = [c for c in word if not c.isspace()]
        if cs:
            yield i, cs


def word_tags(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """Words -> (characters, BMES tags). Whitespace inside a word is dropped."""
    chars: list[str] = []
    tags: list[str] = []
    for _, cs in _characters(words):
        tags.extend(["S"] if len(cs) == 1 else ["B"] + ["M"] * (len(cs) - 2) + ["E"])
        chars.extend(cs)
    return chars, tags


def word_spans(tags: Sequence[str]) -> list[tuple[int, int]]:
    """BMES tags -> word boundaries ``(start, end)`` (end exclusive), lenient on malformed sequences."""
    out = []
    start = 0
    for i, tag in enumerate(tags):
        if tag in ("B", "S") and i > start:
            out.append((start, i))
            start = i
        if tag in ("E", "S"):
            out.append((start, i + 1))
            start = i + 1
    if start < len(tags):
        out.append((start, len(tags)))
    return out


def tags_to_words(chars: Sequence[str], tags: Sequence[str]) -> list[str]:
    return ["".join(chars[s:e]) for s, e in word_spans(tags)]


def to_character_sentence(sentence: Sentence) -> Sentence:
    """A word-segmented sentence -> one token per character with BMES tags (its own tags are dropped)."""
    chars, tags = word_tags(sentence.tokens)
    return Sentence(tokens=chars, tags=tags, spaces=[False] * len(chars), source=sentence.source, id=sentence.id)


def to_character_chunks(sentence: Sentence) -> Sentence:
    """A word-level sentence with IOB2 chunk tags -> one token per character, tags spread over the characters
    (``B-X`` on a word's first character, ``I-X`` on the rest; ``O`` stays ``O``). Whitespace is dropped."""
    word_tags_ = sentence.tags or ["O"] * len(sentence.tokens)
    chars: list[str] = []
    tags: list[str] = []
    for i, cs in _characters(sentence.tokens):
        tag = word_tags_[i]
        inside = "O" if tag == "O" else "I-" + tag.split("-", 1)[1]
        tags.extend([tag] + [inside] * (len(cs) - 1))
        chars.extend(cs)
    return Sentence(tokens=chars, tags=tags, spaces=[False] * len(chars), source=sentence.source, id=sentence.id)
