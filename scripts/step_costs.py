#!/usr/bin/env python
"""Where an early-exit run's time goes, layer step by layer step (issue 10, fixed per-step costs).

    OMP_NUM_THREADS=1 python scripts/step_costs.py models/minilm-ner-uniform-6ep --precision bf16 \
        --out docs/bench/step-costs-minilm-bf16.md

Full depth and token exit run over the same pre-built batches (batch 32, the engine's refill on, units of 8 batches
as ``earlytag bench`` times them), in alternating passes; every layer step is timed as the engine runs it (a CPU
runs each operator to its end before the host goes on, so the host clock times the step). Per step kind (dense:
every row of the group, halted ones restored; packed: the active rows, with every real token's K/V) the table gives
the steps, the tokens computed (active), the real tokens of the groups (K/V rows of a packed step) and the rows with
padding, the time and the time per active token; then the time spent in a layer's step beside the layer (the exit
head, the uncertainty, the policy) and outside the steps (groups starting, leaving, merging; outputs). Last, token
exit's FLOPs speed-up over these sentences (the engine's own count) beside its wall-clock speed-up and that of the
layer steps alone, each over full depth's. Medians of the passes; the timers add a host call per step. CPU only.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

from earlytag import Tagger
from earlytag.bench import ab_finish, ab_parser, ab_start, ab_workload
from earlytag.engine import ExitConfig, runner


class StepTimer:
    """Times the engine's ``_step``, ``_dense_step`` and ``_packed_step`` (patched on the class while active)."""

    def __init__(self):
        self.steps: list[tuple[str, int, int, int, float]] = []  # kind, active, real tokens, rows, seconds
        self.in_step = 0.0

    def __enter__(self):
        e = runner.Engine
        self.saved = e._step, e._dense_step, e._packed_step
        step, dense, packed = self.saved
        timer = self

        def timed_step(eng, *args, **kwargs):
            start = time.perf_counter()
            step(eng, *args, **kwargs)
            timer.in_step += time.perf_counter() - start

        def timed_dense(eng, fl, parts, s, active_t, total_act, kv):
            start = time.perf_counter()
            out = dense(eng, fl, parts, s, active_t, total_act, kv)
            timer.steps.append(("dense", total_act, s.total_tokens, s.h.shape[0] * s.h.shape[1],
                                time.perf_counter() - start))
            return out

        def timed_packed(eng, fl, parts, s, active_t, n_act, kv):
            start = time.perf_counter()
            active = int(n_act.sum())  # the step reads it too (its largest row count): not a new host read
            out = packed(eng, fl, parts, s, active_t, n_act, kv)
            timer.steps.append(("packed", active, s.total_tokens, s.h.shape[0] * s.h.shape[1],
                                time.perf_counter() - start))
            return out

        e._step, e._dense_step, e._packed_step = timed_step, timed_dense, timed_packed
        return self

    def __exit__(self, *exc):
        runner.Engine._step, runner.Engine._dense_step, runner.Engine._packed_step = self.saved


def one_pass(tagger: Tagger, units: list, cfg: ExitConfig) -> dict:
    with StepTimer() as timer:
        start = time.perf_counter()
        outs = [out for unit in units for out in tagger.engine.run_many(unit, cfg)]
        wall = time.perf_counter() - start
    flops = sum(o.stats.flops for o in outs) / sum(o.stats.flops_full for o in outs)
    kinds: dict = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    for kind, active, real, rows, secs in timer.steps:
        k = kinds[kind]
        for i, x in enumerate((1, active, real, rows, secs)):
            k[i] += x
    layers = sum(k[4] for k in kinds.values())
    return {"wall": wall, "layers": layers, "beside": timer.in_step - layers, "outside": wall - timer.in_step,
            "kinds": {k: v for k, v in kinds.items()}, "flops_speedup": 1 / flops}


def main() -> None:
    ap = ab_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--precision", default="bf16")
    args = ab_start(ap)
    tagger = Tagger.from_pretrained(args.model, precision=args.precision)
    docs, units, cfgs = ab_workload(tagger, args)
    for cfg in cfgs.values():
        one_pass(tagger, units[:1], cfg)  # warm
    passes = {c: [] for c in cfgs}
    for _ in range(args.passes):
        for c, cfg in cfgs.items():
            passes[c].append(one_pass(tagger, units, cfg))
    lines = [f"`{args.model}` in {args.precision}, {len(docs)} sentences of {args.data}, batch 32 (units of 8 "
             f"batches), median of {args.passes} alternating passes (seconds):", "",
             "| setting | wall | layer steps | beside the layer (head, policy) | outside the steps | step kind | steps "
             "| active tokens | real tokens | rows with padding | seconds | µs per active token |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, runs in passes.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "layers", "beside", "outside")}
        first = True
        for kind in ("dense", "packed"):
            counts = runs[0]["kinds"].get(kind)
            if counts is None:
                continue
            secs = statistics.median(r["kinds"][kind][4] for r in runs)
            head = (f"| {c} | {med['wall']:.3f} | {med['layers']:.3f} | {med['beside']:.3f} | {med['outside']:.3f}"
                    if first else "| | | | | ")
            lines.append(f"{head} | {kind} | {counts[0]} | {counts[1]} | {counts[2]} | {counts[3]} | {secs:.3f} "
                         f"| {1e6 * secs / max(counts[1], 1):.2f} |")
            first = False
    full, *rest = ({k: statistics.median(r[k] for r in runs) for k in ("wall", "layers", "flops_speedup")}
                   for runs in passes.values())
    lines += ["", "| setting | FLOPs speed-up | wall speed-up (wall/FLOPs) | layer steps' speed-up (/FLOPs) |",
              "|---|---|---|---|"]
    for c, r in zip(list(cfgs)[1:], rest):
        wall, layers = full["wall"] / r["wall"], full["layers"] / r["layers"]
        lines.append(f"| {c} | {r['flops_speedup']:.2f}x | {wall:.2f}x ({wall / r['flops_speedup']:.2f}) "
                     f"| {layers:.2f}x ({layers / r['flops_speedup']:.2f}) |")
    ab_finish(args, lines, workload=False)  # the first line says the workload


if __name__ == "__main__":
    main()
