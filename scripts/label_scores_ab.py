#!/usr/bin/env python
"""The exit head's logits laid out words first ``(N, C)`` (then ``head_scores``: log-softmax, max, entropy along
the last dimension), or labels first ``(C, N)`` (``label_scores``: the same reductions down the rows), timed
alone and inside the engine (issue 10, fixed per-step costs; docs/results.md section 4).

    OMP_NUM_THREADS=1 python scripts/label_scores_ab.py models/minilm-ner-uniform-6ep --precisions bf16 fp32 \
        --out docs/bench/label-scores-ab.txt

The head runs at every layer of an early-exit policy on the words still climbing. With a handful of labels a CPU
reduction along the last dimension pays per row; down the rows of a ``(C, N)`` matrix it runs over long
contiguous vectors. First table: layer 1's head and its scores on N words' hidden states (float32, as the engine
runs its heads), median µs of alternating repeats, and whether the labels are the same. Second: the engine with
the previous head (``previous_head``, a copy kept here on purpose as the baseline) and with the current one, full
depth and token exit over the same pre-built batches (batch 32, refill on, units of 8 batches), alternating
passes, one torch thread; the share of words labelled as with the previous head.
"""

from __future__ import annotations

import statistics
import time
import types

import torch

from earlytag import Tagger
from earlytag.bench import ab_finish, ab_parser, ab_start, ab_workload, engine_variants_ab, variants_ab_rows
from earlytag.engine.policies import head_scores
from earlytag.engine.runner import Engine


def previous_head(engine: Engine, layer: int, hw: torch.Tensor, criterion: str):
    """The engine's head before labels first: ``(N_w, C)`` logits, then :func:`head_scores`."""
    head = engine.model.heads[layer].linear
    return head_scores(head(hw.to(head.weight.dtype)), criterion)


def micro(tagger: Tagger, sizes: list[int], repeats: int) -> list[str]:
    engine, d = tagger.engine, tagger.model.adapter.hidden_size
    rows = ["| words | words first (µs) | labels first (µs) | words first / labels first | same labels |",
            "|---|---|---|---|---|"]
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        hw = torch.randn(n, d, generator=gen) * 2
        fns = {"words": lambda hw=hw: previous_head(engine, 0, hw, "entropy"),
               "labels": lambda hw=hw: engine._head(0, hw, "entropy")}
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for k, f in fns.items():
                for _ in range(20):
                    f()
                start = time.perf_counter()
                for _ in range(100):
                    f()
                times[k].append((time.perf_counter() - start) / 100 * 1e6)
        w, lab = (statistics.median(times[k]) for k in fns)
        same = bool(torch.equal(fns["words"]()[1], fns["labels"]()[1]))
        rows.append(f"| {n} | {w:.1f} | {lab:.1f} | {w / lab:.2f}x | {'yes' if same else 'no'} |")
    return rows


def main() -> None:
    ap = ab_parser(__doc__.split("\n\n")[0], precisions=["bf16", "fp32"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[30, 200, 800, 3000])
    args = ab_start(ap)
    lines = [f"Layer 1's exit head of `{args.model}` and its scores (entropy), float32, median of {args.passes} "
             "alternating repeats of 100 calls:", ""]
    with torch.no_grad():
        lines += micro(Tagger.from_pretrained(args.model), args.sizes, args.passes)
    lines += ["", "| precision | setting | exit head | seconds (median) | words first / this (time) "
              "| full depth / this setting | words as words first |", "|---|---|---|---|---|---|---|"]
    for precision in args.precisions:
        tagger = Tagger.from_pretrained(args.model, precision=precision)
        engine = tagger.engine
        _, units, cfgs = ab_workload(tagger, args)

        def labels_first(e=engine) -> None:
            e.__dict__.pop("_head", None)

        setups = {"words first (previous)": lambda e=engine: setattr(e, "_head", types.MethodType(previous_head, e)),
                  "labels first (default)": labels_first}
        medians, labels = engine_variants_ab(engine, units, cfgs, setups, args.passes, units[0][:2])
        lines += variants_ab_rows(precision, medians, labels, "words first (previous)", ratio_digits=3)
    ab_finish(args, lines)


if __name__ == "__main__":
    main()
