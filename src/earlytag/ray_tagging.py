"""Tag corpora beyond one machine with Ray Data.

    earlytag predict MODEL corpus.jsonl --output tagged.jsonl --engine ray [--address ray://head:10001]

The corpus (JSON lines with ``text`` or ``tokens``, Parquet with such a column, or plain text, one document
per line) is read by Ray Data and tagged by ``map_batches`` with :class:`TaggerPredictor`, an actor class
that loads the model once per actor. Without ``--address`` a local Ray is started; with one, the same
command runs on a cluster (every node needs earlytag installed and the model directory at the same path,
e.g. on shared storage). Output: one JSON line per document, in input order (``.jsonl``), or a Parquet
data set (a directory of files; ``spans`` and ``tokens`` as JSON strings).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .allocator import keep_freed_memory_from_env
from .errors import ConfigError, DataError


class TaggerPredictor:
    """Ray Data actor: one :class:`~earlytag.Tagger` per actor, applied to batches of documents."""

    def __init__(self, model_dir: str, exit: dict | None = None, batch_size: int = 32, threads: int = 1,
                 load: dict | None = None):
        import torch

        from .api import Tagger

        torch.set_num_threads(threads)
        keep_freed_memory_from_env()  # an actor's process is the tagger's alone, as the CLI's is (allocator.py)
        # load: precision, backend and a CRF's decoding, as the local predict loads the model
        self.tagger = Tagger.from_pretrained(model_dir, batch_size=batch_size, **(load or {}))
        self.exit = self.tagger.exit_config(exit)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "tokens" in batch:
            items = [list(t) for t in batch["tokens"]]
        elif "text" in batch:
            items = [str(t) for t in batch["text"]]
        else:
            raise DataError(f"the corpus needs a 'text' or 'tokens' column; it has {sorted(batch)}")
        sentences = [self.tagger.to_sentence(item) for item in items]
        docs, pred = self.tagger.documents(sentences, self.exit)
        out = {k: v for k, v in batch.items() if k not in ("text", "tokens")}
        out["text"] = np.array([d["text"] for d in docs], dtype=object)
        out["spans"] = np.array([json.dumps(d["spans"], ensure_ascii=False) for d in docs], dtype=object)
        out["tokens"] = np.array([json.dumps(d["tokens"], ensure_ascii=False) for d in docs], dtype=object)
        out["flops"] = np.array(pred.doc_flops, dtype=np.float64)
        out["flops_full"] = np.array(pred.doc_flops_full, dtype=np.float64)
        out["exit_layer_sum"] = np.array([float(sum(e)) for e in pred.exit_layers], dtype=np.float64)
        out["words"] = np.array([len(e) for e in pred.exit_layers], dtype=np.int64)
        return out


def read_corpus(path: str):
    import ray.data

    name = path.lower()
    if not Path(path).exists():
        raise DataError("no such file", path)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return ray.data.read_json(path, lines=True) if _ray_read_json_takes_lines() else ray.data.read_json(path)
    if name.endswith(".parquet") or Path(path).is_dir():
        return ray.data.read_parquet(path)
    return ray.data.read_text(path, drop_empty_lines=True)


def _ray_read_json_takes_lines() -> bool:
    import inspect

    import ray.data

    return "lines" in inspect.signature(ray.data.read_json).parameters


def tag_corpus(model_dir: str, input_path: str, output: str, exit: dict | None = None, batch_size: int = 32,
               address: str | None = None, num_actors: int | None = None, threads_per_actor: int = 1,
               output_format: str = "jsonl", rows_per_batch: int = 256, load: dict | None = None) -> dict[str, Any]:
    """Tag ``input_path`` with Ray; returns a summary (documents, seconds, FLOPs speed-up). ``load``: options of
    :meth:`Tagger.from_pretrained` every actor loads the model with (precision, backend, decode, ...)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("engine", "Ray is not installed: pip install 'earlytag[ray]'") from None
    if output == "-":
        raise ConfigError("output", "--engine ray writes to a file or directory, not standard output")
    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # leave one CPU for the read tasks: actors holding every CPU starve the reader (a deadlock)
    actors = num_actors or max(1, (cpus - 1) // threads_per_actor)
    ds = read_corpus(input_path).map_batches(
        TaggerPredictor,
        fn_constructor_kwargs={"model_dir": str(Path(model_dir).resolve()), "exit": exit, "batch_size": batch_size,
                               "threads": threads_per_actor, "load": load},
        batch_size=rows_per_batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads_per_actor,
    )
    summary = _write(ds, output, output_format)
    summary.update({"actors": actors, "cluster_cpus": cpus, "seconds": time.perf_counter() - started,
                    "exit": exit, "engine": "ray"})
    return summary


def _write(ds, output: str, output_format: str) -> dict[str, Any]:
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if output_format == "parquet" or output.endswith(".parquet"):
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            ds = ds.materialize()
            ds.write_parquet(str(tmp))
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        totals = ds.sum(["flops", "flops_full", "exit_layer_sum", "words"])
        return _summary(ds.count(), totals["sum(flops)"], totals["sum(flops_full)"], totals["sum(exit_layer_sum)"],
                        totals["sum(words)"], out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    n = words = 0
    spent = full = layers = 0.0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in ds.iter_rows():
                doc = {k: _plain(v) for k, v in row.items() if k not in _INTERNAL}
                doc["spans"] = json.loads(row["spans"])
                doc["tokens"] = json.loads(row["tokens"])
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                spent += row["flops"]
                full += row["flops_full"]
                layers += row["exit_layer_sum"]
                words += int(row["words"])
                n += 1
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return _summary(n, spent, full, layers, words, out)


_INTERNAL = ("spans", "tokens", "flops", "flops_full", "exit_layer_sum", "words")


def _summary(documents: int, spent: float, full: float, layers: float, words: int, out: Path) -> dict[str, Any]:
    """The same keys as the local engine's summary (documents, words, FLOPs speed-up, mean exit layer)."""
    return {"documents": int(documents), "words": int(words), "flops_speedup": _ratio(full, spent),
            "mean_exit_layer": float(layers) / words if words else 0.0, "output": str(out)}


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else 1.0


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
