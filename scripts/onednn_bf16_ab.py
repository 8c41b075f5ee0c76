#!/usr/bin/env python
"""bf16 layer products three ways, timed inside the engine (issue 10; docs/results.md section 4, "bf16 products
in oneDNN"):

    OMP_NUM_THREADS=1 python scripts/onednn_bf16_ab.py models/minilm-ner-uniform-6ep --out docs/bench/onednn-bf16-ab.txt
    OMP_NUM_THREADS=1 python scripts/onednn_bf16_ab.py models/mpnet-ner-ss --sentences 300 --passes 3 \
        --out docs/bench/onednn-bf16-ab-mpnet.txt

- ``torch``: ``--backend torch`` (``F.linear``, which in bf16 is oneDNN reordering the weight at every call and
  adding the bias in a pass of its own; the packed steps' rows padded to a few bucket sizes, which that needs);
- ``onednn, rows bucketed``: ``--backend onednn`` (weights prepacked once, the bias, the residual sums and GELU
  inside the products) with the rows still padded to the buckets;
- ``onednn``: ``--backend onednn`` as it runs (no padding).

Full depth and token exit over the same pre-built batches (batch 32, refill on, units of 8 batches) in alternating
passes, one torch thread; the share of words labelled as the torch backend labels them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from earlytag import Tagger
from earlytag.allocator import keep_freed_memory
from earlytag.bench import engine_variants_ab, one_thread_machine, prebuilt_batches, variants_ab_rows
from earlytag.engine import ExitConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="uner-en-ewt:test")
    ap.add_argument("--threshold", type=float, default=0.1, help="token exit τ (window 2)")
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # as every earlytag verb runs
    plain = Tagger.from_pretrained(args.model, precision="bf16")
    prepacked = Tagger.from_pretrained(args.model, precision="bf16", backend="onednn")
    docs = [s.tokens for s in plain.load(args.data).sentences[: args.sentences]]
    batches, _ = prebuilt_batches(plain, docs, 32)
    units = [batches[i:i + 8] for i in range(0, len(batches), 8)]
    cfgs = {"full depth": ExitConfig(),
            f"token τ={args.threshold:g}": plain.exit_config({"policy": "token", "threshold": args.threshold})}

    def onednn(bucket: bool):
        def setup():
            engine = prepacked.engine
            if engine.bucket != bucket:
                engine.bucket, engine._fused = bucket, [None] * prepacked.num_layers  # layers rebuilt with it
            return engine
        return setup

    variants = {"torch": lambda: plain.engine, "onednn, rows bucketed": onednn(True), "onednn": onednn(False)}
    medians, labels = engine_variants_ab(plain.engine, units, cfgs, variants, args.passes, units[0][:2])
    lines = ["| precision | setting | layer products | seconds (median) | torch / this (time) "
             "| full depth / this setting | words as torch |", "|---|---|---|---|---|---|---|"]
    lines += variants_ab_rows("bf16", medians, labels, "torch", ratio_digits=3)
    lines += ["", "python scripts/onednn_bf16_ab.py " + " ".join(sys.argv[1:]) + "; "
              f"{args.sentences} sentences of {args.data}, batch 32, median of {args.passes} alternating passes, "
              + one_thread_machine()]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
