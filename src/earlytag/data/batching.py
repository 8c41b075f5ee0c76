"""From words to tensors: sub-word alignment, windows for long documents, padded batches.

Every word gets at least one sub-word (an ``[UNK]`` where the tokenizer yields none); the exit heads read
the first one. A document longer than ``max_length`` sub-words is cut into overlapping windows of whole
words; :func:`merge_windows` gives every word the prediction of the window where it has the most context
on both sides, so nothing is truncated.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError, DataError

IGNORE = -100
_WORD_RE = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]", re.UNICODE)


SURROGATES = re.compile("[\ud800-\udfff]")


def check_text(text: str, where: str = "<input>") -> str:
    """Reject text that is not valid Unicode (a lone UTF-16 surrogate, e.g. from a JSON ``"\\ud800"`` escape):
    tokenizers cannot take it. The error names the field and the character position."""
    bad = SURROGATES.search(text)
    if bad is not None:
        raise DataError(f"character {bad.start()} is a lone surrogate (U+{ord(bad.group()):04X}), which is not "
                        "valid Unicode; remove it or replace it (e.g. with U+FFFD)", where)
    return text


def split_words(text: str, splitter: str = "regex") -> list[tuple[str, int, int]]:
    """Raw text -> ``(word, start, end)``. ``regex``: words (with inner ``-``, ``'``, ``.``) and single
    punctuation marks; ``chars``: every non-space character (Chinese); ``whitespace``: split on spaces."""
    if splitter == "regex":
        return [(m.group(), m.start(), m.end()) for m in _WORD_RE.finditer(text)]
    if splitter == "chars":
        return [(c, i, i + 1) for i, c in enumerate(text) if not c.isspace()]
    if splitter == "whitespace":
        return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    raise ConfigError("word_splitter", f"unknown splitter {splitter!r}")


@dataclass
class Window:
    """One encoder input: a run of whole words of one document, with special tokens."""

    input_ids: list[int]
    word_pos: list[int]  # position in input_ids of each word's first sub-word
    token_word: list[int]  # word (index within the window) of each sub-word, -1 for special tokens
    labels: list[int] | None
    doc: int  # index of the document this window belongs to
    start: int  # index in the document of the window's first word

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_words(self) -> int:
        return len(self.word_pos)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) 1 = token
    word_pos: torch.Tensor  # (B, W)
    word_mask: torch.Tensor  # (B, W) bool
    token_word: torch.Tensor  # (B, T) -1 = special token or padding
    labels: torch.Tensor | None  # (B, W), IGNORE on padding

    def to(self, device) -> Batch:
        return Batch(*(None if t is None else t.to(device) for t in (
            self.input_ids, self.attention_mask, self.word_pos, self.word_mask, self.token_word, self.labels)))

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


METASPACE = "\u2581"  # SentencePiece's word-start marker


class Featurizer:
    """Turns word lists into :class:`Window` objects for one tokenizer."""

    def __init__(self, tokenizer, max_length: int = 512, overlap: int = 16):
        self.tokenizer = tokenizer
        limit = getattr(tokenizer, "model_max_length", None) or max_length
        self.max_length = min(max_length, limit) if limit < 10**6 else max_length
        self.overlap = overlap
        # the special tokens around a sequence: whatever the tokenizer adds before and after a probe word
        probe = tokenizer(["a"], is_split_into_words=True, add_special_tokens=True)
        word_ids = probe.word_ids()
        first = word_ids.index(0)
        last = len(word_ids) - 1 - word_ids[::-1].index(0)
        self.prefix = probe["input_ids"][:first]
        self.suffix = probe["input_ids"][last + 1:]
        self.budget = self.max_length - len(self.prefix) - len(self.suffix)  # sub-words per window
        if self.budget < 2:
            raise ConfigError("max_length", f"{max_length} leaves no room next to the special tokens")
        self.unk_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # SentencePiece vocabularies (XLM-R) split a word that has no "▁x" piece into a bare "▁" and "x": for a
        # Chinese character that is half the sequence, and the word's first sub-word would carry no content.
        # The bare marker is dropped from any word that has more pieces (the text never has spaces there anyway).
        marker = tokenizer.convert_tokens_to_ids(METASPACE)  # the unknown id (or None) where there is no such piece
        self.marker_id = marker if marker not in (None, self.unk_id) else None

    def pieces(self, docs: Sequence[Sequence[str]]) -> list[list[list[int]]]:
        """Sub-word ids of every word of every document (at least one per word, at most ``budget``)."""
        out: list[list[list[int]]] = [[] for _ in docs]
        todo = [i for i, d in enumerate(docs) if len(d)]
        step = 512
        for c in range(0, len(todo), step):
            idx = todo[c:c + step]
            chunk = [list(docs[i]) for i in idx]
            # verbose=False: long documents are windowed below, the "longer than the maximum" warning is not ours
            enc = self.tokenizer(chunk, is_split_into_words=True, add_special_tokens=False, verbose=False)
            for j, (i, words) in enumerate(zip(idx, chunk)):
                per_word: list[list[int]] = [[] for _ in words]
                for tid, w in zip(enc["input_ids"][j], enc.word_ids(j)):
                    if w is not None:
                        per_word[w].append(tid)
                if self.marker_id is not None:
                    per_word = [p[1:] if len(p) > 1 and p[0] == self.marker_id else p for p in per_word]
                out[i] = [p[: self.budget] if p else [self.unk_id] for p in per_word]
        return out

    def windows(self, docs: Sequence[Sequence[str]], labels: Sequence[Sequence[int]] | None = None) -> list[Window]:
        out: list[Window] = []
        for d, per_word in enumerate(self.pieces(docs)):
            doc_labels = labels[d] if labels is not None else None
            for start, end in self._spans(per_word):
                ids = list(self.prefix)
                word_pos, token_word = [], [-1] * len(self.prefix)
                for w in range(start, end):
                    word_pos.append(len(ids))
                    ids.extend(per_word[w])
                    token_word.extend([w - start] * len(per_word[w]))
                ids.extend(self.suffix)
                token_word.extend([-1] * len(self.suffix))
                out.append(Window(ids, word_pos, token_word,
                                  None if doc_labels is None else list(doc_labels[start:end]), d, start))
        return out

    def _spans(self, per_word: list[list[int]]) -> Iterator[tuple[int, int]]:
        """Word ranges ``[start, end)`` of the windows of one document."""
        n = len(per_word)
        if n == 0:
            yield 0, 0
            return
        start = 0
        while True:
            end, used = start, 0
            while end < n and used + len(per_word[end]) <= self.budget:
                used += len(per_word[end])
                end += 1
            yield start, end
            if end >= n:
                return
            # the next window starts `overlap` words back, but always at least half a window further on
            start = max(start + max(1, (end - start) // 2), end - self.overlap)


def collate(windows: Sequence[Window], pad_id: int = 0) -> Batch:
    b = len(windows)
    t = max(len(w) for w in windows)
    nw = max(max(w.num_words for w in windows), 1)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, t), dtype=torch.long)
    token_word = torch.full((b, t), -1, dtype=torch.long)
    word_pos = torch.zeros((b, nw), dtype=torch.long)
    word_mask = torch.zeros((b, nw), dtype=torch.bool)
    has_labels = windows[0].labels is not None
    labels = torch.full((b, nw), IGNORE, dtype=torch.long) if has_labels else None
    for i, w in enumerate(windows):
        n, k = len(w), w.num_words
        input_ids[i, :n] = torch.tensor(w.input_ids)
        attention_mask[i, :n] = 1
        token_word[i, :n] = torch.tensor(w.token_word)
        if k:
            word_pos[i, :k] = torch.tensor(w.word_pos)
            word_mask[i, :k] = True
            if labels is not None:
                labels[i, :k] = torch.tensor(w.labels)
    return Batch(input_ids, attention_mask, word_pos, word_mask, token_word, labels)


def length_sorted_batches(windows: Sequence[Window], batch_size: int) -> Iterator[list[int]]:
    """Indices of windows in batches of similar length (for inference; order is restored by the caller)."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]


def merge_windows(windows: Sequence[Window], doc_lengths: Sequence[int], values: Sequence[Sequence]) -> list[list]:
    """Per-window per-word ``values`` -> per-document lists, each word taken from its best-centred window."""
    docs: list[list] = [[None] * n for n in doc_lengths]
    best: list[list[int]] = [[-1] * n for n in doc_lengths]
    for w, vals in zip(windows, values):
        k = w.num_words
        for j in range(k):
            margin = min(j, k - 1 - j)
            pos = w.start + j
            if margin > best[w.doc][pos]:
                best[w.doc][pos] = margin
                docs[w.doc][pos] = vals[j]
    return docs
