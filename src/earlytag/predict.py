"""``earlytag predict``: read documents, tag them, write JSON lines or CoNLL.

Inputs (``--input-format auto`` goes by extension): ``text`` (one document per non-empty line), ``jsonl``
(``{"text": ...}`` or ``{"tokens": [...]}`` per line; other fields such as ``id`` are carried over),
``conll``/``conllu``/``uner`` (pre-tokenised; tags in the file are ignored).
Output files are written atomically: a failed run leaves no partial file.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from tqdm.auto import tqdm

from .api import ExitLike, Tagger, chunked
from .data import schemes
from .data.batching import SURROGATES
from .data.readers import iter_conll, iter_conllu, iter_lines, iter_uner, parse_json_line
from .data.types import Sentence
from .engine import ExitStats
from .engine.control import exit_report
from .errors import DataError
from .storage import AtomicFile

if TYPE_CHECKING:
    from .pipeline import SegmentThenTag

INPUT_FORMATS = ("auto", "text", "jsonl", "conll", "conllu", "uner")
OUTPUT_FORMATS = ("jsonl", "conll")


def guess_input_format(path: str) -> str:
    name = path.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".conllu"):
        return "conllu"
    if name.endswith(".iob2"):
        return "uner"
    if name.endswith((".conll", ".bio", ".iob")):
        return "conll"
    return "text"


def read_inputs(tagger: Tagger, path: str, input_format: str = "auto",
                on_error: str = "fail") -> Iterator[tuple[Sentence | None, dict]]:
    """Yield ``(sentence, extra fields)`` for every document of ``path`` (``-`` = standard input), in order.

    Text and JSON lines: one document per line, empty lines included (they give empty documents), so output
    record i answers input line i. Extra fields carry ``index`` (0-based position among the documents), ``line``
    (text and JSON lines) and the input's own fields (``id`` ...) of a JSON line or a CoNLL-U ``sent_id``.

    A bad document stops the run (``on_error='fail'``); with ``skip`` it becomes ``(None, {..., "error": ...})``, a
    record that keeps the output aligned; with ``repair`` invalid characters (lone surrogates) become U+FFFD and the
    rest is skipped as with ``skip``. CoNLL inputs pass ``on_error`` to their reader."""
    fmt = guess_input_format(path) if input_format == "auto" else input_format
    if fmt not in INPUT_FORMATS:
        raise DataError(f"unknown input format {input_format!r}; expected one of {', '.join(INPUT_FORMATS)}", path)
    if fmt in ("conll", "conllu", "uner"):
        if path == "-":
            raise DataError(f"{fmt} input must be a file, not standard input", path)
        reader = {"conll": lambda p: iter_conll(p, tag_col=None, on_error=on_error),
                  "conllu": lambda p: iter_conllu(p, on_error=on_error),
                  "uner": lambda p: iter_uner(p, on_error=on_error, tag_col=None)}[fmt]
        for index, sent in enumerate(reader(path)):
            sent.tags = None
            yield sent, ({"index": index, "id": sent.id} if sent.id else {"index": index})
        return
    lines = _stdin_lines() if path == "-" else iter_lines(path)
    for index, (number, line) in enumerate(lines):
        where = {"index": index, "line": number}
        try:
            if fmt == "text" or not line.strip():  # an empty line is an empty document: outputs stay aligned
                yield _sentence(tagger, line, path, number, on_error), where
                continue
            obj = parse_json_line(line, path, number)
            if not isinstance(obj, dict):
                raise DataError("expected a JSON object with 'text' or 'tokens'", path, number)
            extra = {k: v for k, v in obj.items() if k not in ("text", "tokens", "tags", "spaces")}
            yield _sentence(tagger, obj, path, number, on_error), {**where, **extra}
        except DataError as err:
            if on_error == "fail":
                raise DataError(err.message + " (--on-error skip writes an error record for such a document and "
                                "goes on)", err.path, err.line) from None
            yield None, {**where, "error": str(err)}


def _repair(item):
    """Lone surrogates replaced by U+FFFD, one for one (offsets stay those of the input), in a text or in the
    text fields of a JSON document."""
    def fix(value):
        if isinstance(value, str):
            return SURROGATES.sub("\ufffd", value)
        return [fix(x) for x in value] if isinstance(value, list) else value

    return {k: fix(v) for k, v in item.items()} if isinstance(item, dict) else fix(item)


def _sentence(tagger: Tagger, item, path: str, number: int, on_error: str) -> Sentence:
    try:
        return tagger.to_sentence(_repair(item) if on_error == "repair" else item, f"{path}:{number}")
    except DataError as err:
        raise DataError(err.message, path, number) from None


def _stdin_lines() -> Iterator[tuple[int, str]]:
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="strict")
    try:
        for number, line in enumerate(stream, start=1):
            yield number, line.rstrip("\r\n")
    except UnicodeDecodeError:
        raise DataError("not valid UTF-8", "<stdin>") from None


def write_document(out: TextIO, doc: dict, fmt: str, tagger: Tagger) -> None:
    if fmt == "jsonl":
        out.write(json.dumps(doc, ensure_ascii=False) + "\n")
        return
    tags = [t["tag"] for t in doc["tokens"]]
    scheme = tagger.config.input_scheme
    if tagger.config.is_chunking and scheme and scheme != "iob2":
        tags = schemes.from_iob2(tags, scheme)
    for tok, tag in zip(doc["tokens"], tags):
        out.write(f"{tok['text']}\t{tag}\n")
    out.write("\n")


def predict_file(tagger: Tagger, input_path: str, output: str = "-", output_format: str = "jsonl",
                 input_format: str = "auto", exit: ExitLike = None, batch_size: int = 32,
                 chunk_size: int = 4096, progress: bool = False, chunk_words: int = 50_000,
                 on_error: str = "fail", segmenter: SegmentThenTag | None = None) -> dict[str, Any]:
    """Tag a whole file; returns run statistics (documents, FLOPs speed-up, mean exit layer, seconds).
    ``segmenter``: raw text is segmented into words by its segmentation model first (``tagger`` is its tagger)."""
    if output_format not in OUTPUT_FORMATS:
        raise DataError(f"unknown output format {output_format!r}; expected jsonl or conll", output)
    fmt = guess_input_format(input_path) if input_format == "auto" else input_format
    if segmenter is not None and fmt in ("conll", "conllu", "uner"):
        raise DataError(f"{fmt} input is already split into words; --segmenter segments raw text (text or JSON "
                        "lines): drop --segmenter", input_path)
    started = time.perf_counter()
    cfg = tagger.resolve_exit(exit)  # a SpeedController holds a target speed-up over the whole file
    stats = ExitStats(tagger.num_layers)
    seg_stats = ExitStats(segmenter.segmenter.num_layers) if segmenter is not None else None
    model_seconds = 0.0
    n_docs = errors = 0
    bar = tqdm(desc="tagging", unit="doc", disable=not progress, file=sys.stderr, leave=False)
    with _output(output) as target:
        try:
            # streamed: a chunk at a time
            inputs = read_inputs(segmenter or tagger, input_path, input_format, on_error)
            for chunk in chunked(inputs, chunk_size, chunk_words, lambda item: len(item[0]) if item[0] else 0):
                good = [s for s, _ in chunk if s is not None]
                if segmenter is None:
                    docs, pred = tagger.documents(good, cfg, batch_size)
                else:
                    docs, stages = segmenter.documents(good, cfg, batch_size)
                    pred, seg_stats = stages.tagger, seg_stats + stages.segmenter.stats
                    model_seconds += stages.segmenter.model_seconds
                stats = stats + pred.stats
                model_seconds += pred.model_seconds
                tagged = iter(docs)
                for sent, extra in chunk:
                    if sent is None:  # a document that could not be read: its error keeps the place
                        errors += 1
                        if output_format == "jsonl":
                            target.write(json.dumps(extra, ensure_ascii=False) + "\n")
                        else:
                            target.write("\n")
                        continue
                    doc = next(tagged)
                    write_document(target, {**extra, **doc} if extra else doc, output_format, tagger)
                n_docs += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
    summary = {"documents": n_docs, "errors": errors, "words": stats.words, **exit_report(cfg),
               "flops_speedup": stats.flops_speedup, "mean_exit_layer": stats.mean_exit_layer,
               "inference_seconds": round(model_seconds, 3), "seconds": round(time.perf_counter() - started, 3),
               "precision": tagger.precision, "backend": tagger.backend}
    if seg_stats is not None:  # the segmenter's own figures, and the FLOPs speed-up of both models together
        spent, full = stats.flops + seg_stats.flops, stats.flops_full + seg_stats.flops_full
        summary["segmenter"] = {"exit": segmenter.segmenter_exit.to_dict(), "characters": seg_stats.words,
                                "flops_speedup": seg_stats.flops_speedup, "mean_exit_layer": seg_stats.mean_exit_layer}
        summary["flops_speedup_with_segmenter"] = full / spent if spent else 1.0
    return summary


@contextmanager
def _output(output: str) -> Iterator[TextIO]:
    """Standard output, or a file that appears whole when tagging succeeds and not at all otherwise."""
    if output == "-":
        yield sys.stdout
        return
    with AtomicFile(output) as f:
        yield f
