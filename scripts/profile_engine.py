#!/usr/bin/env python
"""Where the time of an early-exit run goes, next to full depth: GEMMs, other operators, Python.

    python scripts/profile_engine.py MODEL_DIR DATA --batch-size 32 --sentences 1000 \
        --exit '{"policy": "token", "threshold": 0.2}' [--precision bf16] [--json OUT]

Runs full depth and the setting under torch.profiler (3 passes each, alternating; medians) on the same pre-built batches and splits
the wall time into matrix multiplications (aten::addmm/mm/bmm), the other operators, and what is left
(the Python interpreter and framework dispatch around the operators). The profiler adds a cost to every
operator, which distorts small batches most, so the speed-up is also timed without it, as `earlytag bench`
times it (full depth and the setting in alternation, median of 3 passes): ``unprofiled``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from earlytag import Tagger
from earlytag.bench import paired
from earlytag.data.batching import collate, length_sorted_batches
from earlytag.engine import ExitConfig, ExitStats

GEMM = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul")


def run(tagger: Tagger, batches: list, cfg: ExitConfig) -> list:
    """As the Tagger runs them: batch size 1 one by one, larger batches refilling thin layers (run_many)."""
    if batches[0].size > 1:
        return tagger.engine.run_many(batches, cfg)
    return [tagger.engine.run(b, cfg) for b in batches]


def measure(tagger: Tagger, batches: list, cfg: ExitConfig) -> dict:
    run(tagger, batches[:8], cfg)  # warm-up
    stats = ExitStats(tagger.num_layers)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        outs = run(tagger, batches, cfg)
        wall = time.perf_counter() - start
    for out in outs:
        stats = stats + out.stats
    ops = prof.key_averages()
    total = sum(k.self_cpu_time_total for k in ops) / 1e6
    gemm = sum(k.self_cpu_time_total for k in ops if k.key in GEMM) / 1e6
    calls = sum(k.count for k in ops)
    top = sorted(ops, key=lambda k: -k.self_cpu_time_total)[:14]
    return {"exit": cfg.describe(), "wall_s": wall, "gemm_s": gemm, "other_ops_s": total - gemm,
            "python_and_dispatch_s": max(wall - total, 0.0), "operator_calls": calls,
            "flops_speedup": stats.flops_speedup, "dense_layer_steps": stats.dense_layers,
            "packed_layer_steps": stats.packed_layers,
            "top_operators": [(k.key, round(k.self_cpu_time_total / 1e6, 4), k.count) for k in top]}


def median_pass(runs: list[dict]) -> dict:
    """The median of every timed figure over several profiled passes of the same setting."""
    out = dict(runs[0])
    for key in ("wall_s", "gemm_s", "other_ops_s", "python_and_dispatch_s"):
        out[key] = statistics.median(r[key] for r in runs)
    out["passes"] = len(runs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--exit", default='{"policy": "token", "threshold": 0.2}')
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 | int8 (both settings run in it)")
    p.add_argument("--json")
    args = p.parse_args()
    tagger = Tagger.from_pretrained(args.model, precision=args.precision)
    docs = [s.tokens for s in tagger.load(args.data).sentences[: args.sentences]]
    windows = tagger.featurizer.windows(docs)
    batches = [collate([windows[i] for i in idx], tagger.featurizer.pad_id)
               for idx in length_sorted_batches(windows, args.batch_size)]
    cfgs = {"full": ExitConfig(), "early": tagger.exit_config(json.loads(args.exit))}
    passes = {k: [] for k in cfgs}
    for _ in range(3):  # alternating profiled passes; the median of each figure (this machine is noisy)
        for key, cfg in cfgs.items():
            passes[key].append(measure(tagger, batches, cfg))
    full, early = (median_pass(passes[k]) for k in cfgs)
    size = 1 if args.batch_size == 1 else 8  # as earlytag bench: units of 8 batches that the engine refills across
    units = [batches[i:i + size] for i in range(0, len(batches), size)]
    timing = paired(lambda u: run(tagger, u, cfgs["full"]), lambda u: run(tagger, u, cfgs["early"]), units, 3)
    speedup, early_s, full_s = timing.speedup, timing.seconds, timing.baseline_seconds
    result = {"batch_size": args.batch_size, "precision": args.precision, "sentences": len(docs), "torch_threads": torch.get_num_threads(),
              "full": full, "early": early,
              "unprofiled": {"full_s": full_s, "early_s": early_s, "wall_speedup": speedup},
              "ratios": {k: full[k] / early[k] for k in ("wall_s", "gemm_s", "other_ops_s", "python_and_dispatch_s")
                         if early[k]}}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
