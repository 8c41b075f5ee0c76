#!/usr/bin/env python
"""bf16 layer products four ways, timed inside the engine (issue 10; docs/results.md section 4, "bf16 products
in oneDNN"):

    OMP_NUM_THREADS=1 python scripts/onednn_bf16_ab.py models/minilm-ner-uniform-6ep --out docs/bench/onednn-bf16-ab.txt
    OMP_NUM_THREADS=1 python scripts/onednn_bf16_ab.py models/mpnet-ner-ss --sentences 300 --passes 3 \
        --out docs/bench/onednn-bf16-ab-mpnet.txt

- ``torch``: ``--backend torch`` (``F.linear``, which in bf16 is oneDNN reordering the weight at every call and
  adding the bias in a pass of its own; every step's rows padded to a few bucket sizes, which that needs);
- ``onednn, every step bucketed``: ``--backend onednn`` (weights prepacked once; the bias, the residual sums and
  GELU inside the products) with the rows of every step padded to the buckets;
- ``onednn, packed steps bucketed``: the packed steps' rows padded, not the dense steps' (whose ``b·T`` rows
  repeat from layer to layer) — ``--backend onednn`` as it runs;
- ``onednn, no buckets``.

First table: full depth and token exit over the same pre-built batches (batch 32, refill on, units of 8 batches)
in alternating passes after a warm-up, one torch thread; the share of words labelled as the torch backend labels
them. A warm pass has met every row count before, and oneDNN keeps a product prepared per shape; a program that
tags a file once meets each for the first time. Second table (``--fresh N``): the first pass over the same
sentences in a fresh process per variant (after two batches), the variants' processes in turn, N rounds, median.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from earlytag import Tagger
from earlytag.bench import ab_finish, ab_parser, ab_start, ab_workload, engine_variants_ab, variants_ab_rows

# variant -> (backend, pad the packed steps' rows, pad the dense steps' rows); None: the backend's own choice
VARIANTS = {"torch": ("torch", None, None), "onednn, every step bucketed": ("onednn", True, True),
            "onednn, packed steps bucketed (default)": ("onednn", True, False),
            "onednn, no buckets": ("onednn", False, False)}


def set_buckets(tagger: Tagger, packed: bool | None, dense: bool | None):
    engine = tagger.engine
    if packed is not None and (engine.bucket, engine.bucket_dense) != (packed, dense):
        engine.bucket, engine.bucket_dense = packed, dense
        engine._fused = [None] * tagger.num_layers  # the layers rebuilt with them
    return engine


def setup(args) -> tuple[dict, list, dict]:
    taggers = {b: Tagger.from_pretrained(args.model, precision="bf16", backend=b) for b in ("torch", "onednn")}
    _, units, cfgs = ab_workload(taggers["torch"], args)
    return taggers, units, cfgs


def first_pass(args) -> None:
    """One variant's first pass over the sentences, in this (fresh) process: prints the seconds per setting."""
    backend, packed, dense = VARIANTS[args.first_pass]
    taggers, units, cfgs = setup(args)
    engine = set_buckets(taggers[backend], packed, dense)
    for cfg in cfgs.values():
        engine.run_many(units[0][:2], cfg)
    seconds = []
    for cfg in cfgs.values():
        start = time.perf_counter()
        for unit in units:
            engine.run_many(unit, cfg)
        seconds.append(time.perf_counter() - start)
    print(" ".join(f"{s:.4f}" for s in seconds))


def fresh_rows(args, cfg_names: list[str]) -> list[str]:
    times = {v: [] for v in VARIANTS}
    for _ in range(args.fresh):
        for v in VARIANTS:
            cmd = [sys.executable, __file__, args.model, "--out", "-", "--first-pass", v, "--data", args.data,
                   "--sentences", str(args.sentences), "--threshold", str(args.threshold)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
            times[v].append([float(x) for x in out[-len(cfg_names):]])
    rows = [f"First pass in a fresh process, median of {args.fresh} rounds (seconds):", "",
            "| setting | layer products | seconds (median) | torch / this (time) |", "|---|---|---|---|"]
    for i, c in enumerate(cfg_names):
        base = statistics.median(t[i] for t in times["torch"])
        for v in VARIANTS:
            med = statistics.median(t[i] for t in times[v])
            rows.append(f"| {c} | {v} | {med:.3f} | {base / med:.3f}x |")
    return rows


def main() -> None:
    ap = ab_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--fresh", type=int, default=3, help="rounds of fresh processes (0: none)")
    ap.add_argument("--first-pass", choices=list(VARIANTS), help=argparse.SUPPRESS)  # the child of --fresh
    args = ab_start(ap)
    if args.first_pass:
        first_pass(args)
        return
    taggers, units, cfgs = setup(args)
    variants = {v: (lambda b=b, p=p, d=d: set_buckets(taggers[b], p, d)) for v, (b, p, d) in VARIANTS.items()}
    medians, labels = engine_variants_ab(taggers["torch"].engine, units, cfgs, variants, args.passes, units[0][:2])
    lines = [f"Warm passes, median of {args.passes} alternating passes:", "",
             "| precision | setting | layer products | seconds (median) | torch / this (time) "
             "| full depth / this setting | words as torch |", "|---|---|---|---|---|---|---|"]
    lines += variants_ab_rows("bf16", medians, labels, "torch", ratio_digits=3)
    if args.fresh:
        del taggers
        lines += [""] + fresh_rows(args, list(cfgs))
    ab_finish(args, lines, passes=False)  # two tables, each says its passes


if __name__ == "__main__":
    main()
