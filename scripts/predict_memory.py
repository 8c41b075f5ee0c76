"""Peak memory of `earlytag predict` on a large input: the input is streamed, so the peak must not grow with it.

    python scripts/predict_memory.py --model models/minilm-ner --gigabytes 1.1 --json docs/serve/predict-memory.json

Writes a plain-text corpus of the requested size (UNER English EWT train sentences, repeated, 20 to a line:
paragraphs of ~350 words, some longer than one encoder window) into
a temporary directory, runs `earlytag predict MODEL CORPUS --output -` (the JSON lines go to a counter, not to
disk), samples the process's resident memory every second, and records the peak, the documents tagged and the
time. `--model tiny` uses a tiny random 3-layer encoder with the all-MiniLM-L6-v2 tokenizer: the memory
behaviour of reading and writing does not depend on the encoder, and a real one would take hours for a
gigabyte on two CPU cores. `--also-megabytes` repeats the run on a small corpus, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def make_tiny_model(path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig

    from earlytag import Tagger
    from earlytag.model.config import TaggerConfig
    from earlytag.model.encoders import minilm_dir
    from earlytag.model.tagger import EarlyExitTagger

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512)
    model = EarlyExitTagger(TaggerConfig(labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]), cfg)
    Tagger(model, AutoTokenizer.from_pretrained(str(minilm_dir()))).save_pretrained(path, overwrite=True)


def make_corpus(path: Path, size: int) -> int:
    from earlytag.data.datasets import load_dataset

    texts = [s.text for s in load_dataset("uner-en-ewt:train", "ner").sentences]
    paragraphs = [" ".join(texts[i:i + 20]) for i in range(0, len(texts), 20)]
    block = ("\n".join(paragraphs) + "\n").encode()
    lines = 0
    with open(path, "wb") as f:
        written = 0
        while written < size:
            f.write(block)
            written += len(block)
            lines += len(paragraphs)
    return lines


def run(model: str, corpus: Path, batch_size: int) -> dict:
    cmd = [sys.executable, "-m", "earlytag.cli", "predict", model, str(corpus), "--output", "-", "--quiet",
           "--batch-size", str(batch_size)]  # one torch thread: set OMP_NUM_THREADS=1 on a shared machine
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    samples: list[tuple[float, float]] = []
    out = {"lines": 0, "bytes": 0}

    def count() -> None:
        for line in proc.stdout:
            out["lines"] += 1
            out["bytes"] += len(line)

    reader = threading.Thread(target=count, daemon=True)
    reader.start()
    while proc.poll() is None:
        samples.append((time.perf_counter() - start, rss_mb(proc.pid)))
        time.sleep(1.0)
    reader.join()
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}): {err[-2000:]}")
    seconds = time.perf_counter() - start
    peak = max((m for _, m in samples), default=0.0)
    return {"input_bytes": corpus.stat().st_size, "documents": out["lines"], "output_bytes": out["bytes"],
            "seconds": round(seconds, 1), "peak_rss_mb": round(peak, 1),
            "rss_mb_over_time": [[round(t), round(m)] for t, m in samples[:: max(1, len(samples) // 60)]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--gigabytes", type=float, default=1.1)
    ap.add_argument("--also-megabytes", type=float, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model == "tiny":
            model = str(tmp / "tiny-model")
            make_tiny_model(Path(model))
        result = {"model": args.model, "machine": os.uname().machine, "cpus": os.cpu_count(), "runs": []}
        for size in (args.also_megabytes * 1e6, args.gigabytes * 1e9):
            corpus = tmp / f"corpus-{int(size)}.txt"
            make_corpus(corpus, int(size))
            run_result = run(model, corpus, args.batch_size)
            corpus.unlink()
            result["runs"].append(run_result)
            print(json.dumps({k: v for k, v in run_result.items() if k != "rss_mb_over_time"}), flush=True)
    if args.json:
        from earlytag.storage import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
