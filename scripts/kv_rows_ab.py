#!/usr/bin/env python
"""Keys and values of a packed step over every ``(b, T)`` position of the group, or over its real tokens only
(``Engine.kv_real_below``), timed inside the engine (issue 10, fixed per-step costs; docs/results.md section 4);
with ``--knob dense_above``, which steps run densely (every position) instead of packed.

    OMP_NUM_THREADS=1 python scripts/kv_rows_ab.py models/mpnet-ner-ss --precisions bf16 fp32 --sentences 300 \
        --out docs/bench/kv-rows-ab-mpnet.txt
    OMP_NUM_THREADS=1 python scripts/kv_rows_ab.py models/mpnet-ner-ss --knob dense_above --precisions bf16 fp32 \
        --sentences 300 --out docs/bench/dense-above-ab-mpnet.txt

A group's sentences differ in length (and merged groups join batches of different lengths), so part of its
``(b, T)`` positions are padding; a packed step multiplied every position by the K/V weights. The variants: every
position (``kv_real_below=0``), the real tokens' rows only where they are less than 75% of the positions
(``0.75``), and the real tokens' rows wherever the group has padding (``1.0``, the engine's default: the gather
and scatter paid on every packed step of a padded group). Full depth and token exit run with each over the same pre-built batches (batch 32, the engine's
refill on, units of 8 batches) in alternating passes, one torch thread; medians of the passes, and the share of
words labelled as with every position (padding excluded). ``dense_above``: a layer step runs densely when at least
this share of the group's positions is active — 0.8 (the engine's first default), 0.9 (now), or 1.0 (only a group with
no padding and every token active; any other step packed, its padding out of every product but the attention).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

from earlytag import Tagger
from earlytag.allocator import keep_freed_memory
from earlytag.bench import engine_variants_ab, one_thread_machine, prebuilt_batches, variants_ab_rows
from earlytag.engine import ExitConfig

KNOBS = {  # the Engine attribute -> its variants (label: value), the first the baseline of the table's ratios
    "kv_real_below": {"every position": 0.0, "real rows where padding is 25% or more": 0.75,
                      "real rows wherever there is padding (default)": 1.0},
    "dense_above": {"dense at 80% active": 0.8, "dense at 90% active (default)": 0.9,
                    "dense only with every position active": 1.0},
}
HEADERS = {"kv_real_below": ("keys and values", "every position"), "dense_above": ("layer steps", "80%")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="uner-en-ewt:test")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--threshold", type=float, default=0.1, help="token exit τ (window 2)")
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--knob", choices=list(KNOBS), default="kv_real_below")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    variants = KNOBS[args.knob]
    what, base_name = HEADERS[args.knob]
    torch.set_num_threads(1)
    keep_freed_memory()  # as every earlytag verb runs
    lines = [f"| precision | setting | {what} | seconds (median) | {base_name} / this (time) "
             f"| full depth / this setting | words as {base_name} |", "|---|---|---|---|---|---|---|"]
    for precision in args.precisions:
        tagger = Tagger.from_pretrained(args.model, precision=precision)
        docs = [s.tokens for s in tagger.load(args.data).sentences[: args.sentences]]
        batches, _ = prebuilt_batches(tagger, docs, 32)
        units = [batches[i:i + 8] for i in range(0, len(batches), 8)]
        cfgs = {"full depth": ExitConfig(),
                f"token τ={args.threshold:g}": tagger.exit_config({"policy": "token", "threshold": args.threshold})}
        setups = {v: partial(setattr, tagger.engine, args.knob, value) for v, value in variants.items()}
        medians, labels = engine_variants_ab(tagger.engine, units, cfgs, setups, args.passes, units[0][:2])
        lines += variants_ab_rows(precision, medians, labels, next(iter(variants)), ratio_digits=3)
    lines += ["", "python scripts/kv_rows_ab.py " + " ".join(sys.argv[1:]) + "; "
              f"{args.sentences} sentences of {args.data}, batch 32, median of {args.passes} alternating passes, "
              + one_thread_machine()]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
