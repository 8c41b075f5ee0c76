"""Readers for the column formats people keep their tagged data in.

- CoNLL columns (``read_conll``): space or tab separated, configurable token/tag columns, ``-DOCSTART-``
  lines skipped, blank line between sentences.
- CoNLL-U (``read_conllu``): UPOS or XPOS; multi-word ranges ``n-m`` and empty nodes ``n.1`` skipped;
  ``SpaceAfter=No`` kept so the text can be rebuilt.
- Universal NER ``.iob2`` (``read_uner``): ``#`` comment lines, then index/token/tag/... columns.
- JSON lines (``read_jsonl``): ``{"tokens": [...], "tags": [...]}`` per line.

Every malformed input raises :class:`~earlytag.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .types import Sentence

FORMATS = ("conll", "conllu", "uner", "jsonl")
ON_ERROR = ("fail", "skip", "repair")


@dataclass
class ReadReport:
    """What a lenient read (``on_error`` skip or repair) left out or changed."""

    skipped_sentences: int = 0  # whole sentences dropped (skip)
    repaired_lines: int = 0  # bad lines dropped from their sentence (repair)
    problems: list[str] = field(default_factory=list)  # the first few, as file:line: message

    def note(self, err: DataError) -> None:
        if len(self.problems) < 5:
            self.problems.append(str(err))

    def __bool__(self) -> bool:
        return bool(self.skipped_sentences or self.repaired_lines)

    def describe(self) -> str:
        done = []
        if self.skipped_sentences:
            done.append(f"skipped {self.skipped_sentences} sentence(s)")
        if self.repaired_lines:
            done.append(f"repaired {self.repaired_lines} line(s) by dropping them")
        return ", ".join(done) + (f" (first: {self.problems[0]})" if self.problems else "")


def _bad_line(err: DataError, on_error: str, report: ReadReport) -> bool:
    """A bad line: raise (fail), or count it; True when its sentence must be dropped (skip)."""
    if on_error == "fail":
        raise _hint(err, on_error) from None
    report.note(err)
    if on_error == "skip":
        return True
    report.repaired_lines += 1
    return False


def _hint(err: DataError, on_error: str) -> DataError:
    if on_error == "fail":
        return DataError(err.message + " (--on-error skip drops such sentences, --on-error repair such lines)",
                         err.path, err.line)
    return err


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 file, line endings stripped; bad UTF-8 names its line.

    Streams the file: memory does not grow with its size."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError("no such file", path) from None
    except IsADirectoryError:
        raise DataError("is a directory, expected a file", path) from None
    except OSError as err:
        raise DataError(f"cannot read: {err.strerror}", path) from None
    with f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            raw = raw.rstrip(b"\n")
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"not valid UTF-8 (byte {err.start + 1} of the line)", path, number) from None


def parse_json_line(line: str, path, number: int):
    """``json.loads`` with errors that name the file and line (deep nesting included)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg} (column {err.colno})", path, number) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", path, number) from None


def _require_sentences(sentences: list[Sentence], path) -> list[Sentence]:
    if not sentences:
        raise DataError("no sentences found (empty file?)", path)
    return sentences


def _check_tag(tag: str, path, number: int) -> str:
    if not tag or any(c.isspace() for c in tag):
        raise DataError(f"empty or blank tag {tag!r}", path, number)
    return tag


def read_conll(
    path: str | os.PathLike,
    token_col: int = 0,
    tag_col: int | None = -1,
    sep: str = "auto",
    comments: bool = False,
    on_error: str = "fail",
    report: ReadReport | None = None,
) -> list[Sentence]:
    """Read a CoNLL column file (see :func:`iter_conll`)."""
    return _require_sentences(list(iter_conll(path, token_col, tag_col, sep, comments, False, on_error, report)),
                              path)


def iter_conll(
    path: str | os.PathLike,
    token_col: int = 0,
    tag_col: int | None = -1,
    sep: str = "auto",
    comments: bool = False,
    text_comments: bool = False,
    on_error: str = "fail",
    report: ReadReport | None = None,
) -> Iterator[Sentence]:
    """Sentences of a CoNLL column file, streamed.

    ``sep='auto'`` splits a line on tabs when it has one, on runs of spaces otherwise. Every token line of a
    file must have the same number of columns. ``tag_col=None`` reads tokens only. ``comments``: lines starting
    with ``#`` are comments; ``text_comments``: a ``# text = ...`` comment gives the spacing of the next
    sentence's tokens and a ``# sent_id = ...`` comment its id. A bad token line (empty token, wrong number of
    columns, empty tag) stops the read (``on_error='fail'``), drops its sentence (``skip``) or drops the line
    (``repair``); ``report`` counts what was dropped.
    """
    report = report if report is not None else ReadReport()
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    ncols: int | None = None
    first_line = 0
    text: str | None = None
    sent_id: str | None = None
    bad = False  # the current sentence had a bad line (on_error='skip')

    def sentence() -> Sentence:
        sent = Sentence(list(tokens), list(tags) if tag_col is not None else None, None, f"{path}:{first_line}",
                        sent_id, lines=list(lines))
        if text is not None:
            sent.spaces = align_spaces(text, sent.tokens)
        return sent

    for number, line in iter_lines(path):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if bad:
                report.skipped_sentences += 1
            elif tokens:
                yield sentence()
            tokens.clear()
            tags.clear()
            lines.clear()
            text = sent_id = None
            bad = False
            continue
        if comments and line.startswith("#"):
            if text_comments and not tokens and line.startswith("# text = "):
                text = line[len("# text = "):]
            elif text_comments and not tokens and line.startswith("# sent_id = "):
                sent_id = line[len("# sent_id = "):].strip()
            continue
        if sep == "auto":
            cols = line.split("\t") if "\t" in line else line.split()
        else:
            cols = line.split(sep)
        if ncols is None:
            ncols = len(cols)
            if tag_col is not None and ncols < 2:
                raise DataError(f"expected a token column and a tag column, found {ncols} column", path, number)
            for name, col in (("token", token_col), ("tag", tag_col)):
                if col is not None and not -ncols <= col < ncols:
                    raise DataError(f"{name} column {col} does not exist: the line has {ncols} columns", path, number)
        try:
            if len(cols) != ncols:
                raise DataError(f"expected {ncols} columns like the first token line, found {len(cols)}", path, number)
            token = cols[token_col]
            if not token or token.isspace():
                raise DataError("empty token", path, number)
            tag = _check_tag(cols[tag_col].strip(), path, number) if tag_col is not None else None
        except DataError as err:
            bad = _bad_line(err, on_error, report) or bad
            continue
        if not tokens:
            first_line = number
        tokens.append(token)
        lines.append(number)
        if tag_col is not None:
            tags.append(tag)
    if bad:
        report.skipped_sentences += 1
    elif tokens:
        yield sentence()


def read_uner(path: str | os.PathLike, on_error: str = "fail", report: ReadReport | None = None) -> list[Sentence]:
    """Universal NER ``.iob2`` (see :func:`iter_uner`)."""
    return _require_sentences(list(iter_uner(path, on_error, report)), path)


def iter_uner(path: str | os.PathLike, on_error: str = "fail", report: ReadReport | None = None,
              tag_col: int | None = 2) -> Iterator[Sentence]:
    """Universal NER ``.iob2``: comment lines, then ``index<TAB>token<TAB>tag[<TAB>...]``.

    The ``# text = ...`` comment, when present, gives the spacing of the tokens, ``# sent_id = ...`` the id (its
    prefix names the genre in the English Web Treebank: answers, email, newsgroup, reviews, weblog).
    """
    return iter_conll(path, token_col=1, tag_col=tag_col, sep="\t", comments=True, text_comments=True,
                      on_error=on_error, report=report)


def align_spaces(text: str, tokens: list[str]) -> list[bool] | None:
    """Find the tokens one after another in ``text``; whether whitespace follows each. None if they don't fit."""
    spaces: list[bool] = []
    pos = 0
    for tok in tokens:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if text.startswith(tok, pos):
            pos += len(tok)
        else:
            return None
        spaces.append(pos < len(text) and text[pos].isspace())
    return spaces


def read_conllu(path: str | os.PathLike, tag_field: str = "upos", on_error: str = "fail",
                report: ReadReport | None = None) -> list[Sentence]:
    """Read CoNLL-U (see :func:`iter_conllu`)."""
    return _require_sentences(list(iter_conllu(path, tag_field, on_error, report)), path)


def iter_conllu(path: str | os.PathLike, tag_field: str = "upos", on_error: str = "fail",
                report: ReadReport | None = None) -> Iterator[Sentence]:
    """Sentences of a CoNLL-U file, streamed; ``tag_field`` is ``upos`` (column 4) or ``xpos`` (column 5). Bad word
    lines follow ``on_error`` as in :func:`iter_conll`."""
    col = {"upos": 3, "xpos": 4}.get(tag_field.lower())
    if col is None:
        raise DataError(f"tag field must be upos or xpos, not {tag_field!r}", path)
    report = report if report is not None else ReadReport()
    tokens: list[str] = []
    tags: list[str] = []
    spaces: list[bool] = []
    lines: list[int] = []
    sent_id: str | None = None
    bad = False

    for number, line in iter_lines(path):
        if not line.strip():
            if bad:
                report.skipped_sentences += 1
            elif tokens:
                yield Sentence(list(tokens), list(tags), list(spaces), f"{path}:{lines[0]}", sent_id, list(lines))
            tokens.clear()
            tags.clear()
            spaces.clear()
            lines.clear()
            sent_id, bad = None, False
            continue
        if line.startswith("#"):
            if line.startswith("# sent_id = "):
                sent_id = line[len("# sent_id = "):].strip()
            continue
        cols = line.split("\t")
        try:
            if len(cols) != 10:
                raise DataError(f"CoNLL-U needs 10 tab-separated columns, found {len(cols)}", path, number)
            word_id = cols[0]
            if "-" in word_id or "." in word_id:  # multi-word token range or empty node
                continue
            if not word_id.isdigit():
                raise DataError(f"word ID must be an integer, n-m or n.m, not {word_id!r}", path, number)
            if not cols[1] or cols[1].isspace():
                raise DataError("empty word form (column 2)", path, number)
            tag = _check_tag(cols[col], path, number)
        except DataError as err:
            bad = _bad_line(err, on_error, report) or bad
            continue
        tokens.append(cols[1])
        tags.append(tag)
        spaces.append("SpaceAfter=No" not in cols[9].split("|"))
        lines.append(number)
    if bad:
        report.skipped_sentences += 1
    elif tokens:
        yield Sentence(list(tokens), list(tags), list(spaces), f"{path}:{lines[0]}", sent_id, list(lines))


def read_jsonl(path: str | os.PathLike, require_tags: bool = True, on_error: str = "fail",
               report: ReadReport | None = None) -> list[Sentence]:
    """Read ``{"tokens": [...], "tags": [...]}`` objects, one per line (blank lines ignored). A bad line stops the
    read, or with ``on_error`` skip/repair is left out (and counted in ``report``)."""
    report = report if report is not None else ReadReport()
    sentences = []
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            sentences.append(_jsonl_sentence(line, path, number, require_tags))
        except DataError as err:
            if on_error == "fail":
                raise _hint(err, on_error) from None
            report.note(err)
            report.skipped_sentences += 1
    return _require_sentences(sentences, path)


def _jsonl_sentence(line: str, path, number: int, require_tags: bool) -> Sentence:
    """One JSON line as a tagged sentence, or a DataError naming the line."""
    obj = parse_json_line(line, path, number)
    if not isinstance(obj, dict):
        raise DataError("expected a JSON object with 'tokens' and 'tags'", path, number)
    toks = obj.get("tokens")
    if not isinstance(toks, list) or not toks or not all(isinstance(t, str) and t for t in toks):
        raise DataError("field 'tokens' must be a non-empty list of non-empty strings", path, number)
    tags = obj.get("tags")
    if tags is None and require_tags:
        raise DataError("missing field 'tags'", path, number)
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DataError("field 'tags' must be a list of strings", path, number)
        if len(tags) != len(toks):
            raise DataError(f"'tokens' has {len(toks)} items but 'tags' has {len(tags)}", path, number)
        for tag in tags:
            _check_tag(tag, path, number)
    spaces = obj.get("spaces")
    if spaces is not None and (not isinstance(spaces, list) or len(spaces) != len(toks)
                               or not all(isinstance(x, bool) for x in spaces)):
        raise DataError("field 'spaces' must be a list of booleans (true/false) as long as 'tokens'", path, number)
    return Sentence(toks, tags, spaces, f"{path}:{number}", obj.get("id"), [number] * len(toks))


def guess_format(path: str | os.PathLike) -> str:
    name = str(path).lower()
    if name.endswith(".conllu"):
        return "conllu"
    if name.endswith(".iob2"):
        return "uner"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    return "conll"


def read_file(path: str | os.PathLike, format: str = "auto", *, tag_field: str = "upos", token_col: int = 0,
              tag_col: int = -1, on_error: str = "fail", report: ReadReport | None = None) -> list[Sentence]:
    """Read any supported file; ``format='auto'`` goes by the file's extension. ``on_error``: fail | skip | repair."""
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}", path)
    fmt = guess_format(path) if format == "auto" else format
    if fmt == "conllu":
        return read_conllu(path, tag_field, on_error, report)
    if fmt == "uner":
        return read_uner(path, on_error, report)
    if fmt == "jsonl":
        return read_jsonl(path, on_error=on_error, report=report)
    if fmt == "conll":
        return read_conll(path, token_col=token_col, tag_col=tag_col, on_error=on_error, report=report)
    raise DataError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}", path)
