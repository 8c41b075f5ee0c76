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

from functools import partial

from earlytag import Tagger
from earlytag.bench import ab_finish, ab_parser, ab_start, ab_workload, engine_variants_ab, variants_ab_rows

KNOBS = {  # the Engine attribute -> its variants (label: value), the first the baseline of the table's ratios
    "kv_real_below": {"every position": 0.0, "real rows where padding is 25% or more": 0.75,
                      "real rows wherever there is padding (default)": 1.0},
    "dense_above": {"dense at 80% active": 0.8, "dense at 90% active (default)": 0.9,
                    "dense only with every position active": 1.0},
}
HEADERS = {"kv_real_below": ("keys and values", "every position"), "dense_above": ("layer steps", "80%")}


def main() -> None:
    ap = ab_parser(__doc__.split("\n\n")[0], precisions=["bf16", "fp32"])
    ap.add_argument("--knob", choices=list(KNOBS), default="kv_real_below")
    args = ab_start(ap)
    variants = KNOBS[args.knob]
    what, base_name = HEADERS[args.knob]
    lines = [f"| precision | setting | {what} | seconds (median) | {base_name} / this (time) "
             f"| full depth / this setting | words as {base_name} |", "|---|---|---|---|---|---|---|"]
    for precision in args.precisions:
        tagger = Tagger.from_pretrained(args.model, precision=precision)
        _, units, cfgs = ab_workload(tagger, args)
        setups = {v: partial(setattr, tagger.engine, args.knob, value) for v, value in variants.items()}
        medians, labels = engine_variants_ab(tagger.engine, units, cfgs, setups, args.passes, units[0][:2])
        lines += variants_ab_rows(precision, medians, labels, next(iter(variants)), ratio_digits=3)
    ab_finish(args, lines)


if __name__ == "__main__":
    main()
