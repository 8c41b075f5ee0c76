"""Why the engine pads the rows of bf16 GEMMs: the four projections of an all-MiniLM-L6-v2 layer step (384 -> 1152
Q/K/V, 384 -> 384, 384 -> 1536, 1536 -> 384) timed over 300 steps whose row counts are drawn between 200 and 600
(as the packed step's active tokens vary), against the same steps with the rows rounded up to the engine's
buckets (earlytag.engine.runner.bucket_rows) and against one fixed row count, in fp32, bf16 and int8, new draws
every round, median of 3 rounds.

    python scripts/gemm_shapes.py --json docs/bench/gemm-shapes.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from earlytag.engine.runner import bucket_rows  # noqa: E402
from earlytag.model.precision import Int8Linear  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d = 384
    torch.manual_seed(0)
    shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)]  # (out, in) of the four projections
    weights = [(torch.randn(o, i) * 0.05, torch.zeros(o)) for o, i in shapes]

    def step(linears):
        def run(n, dtype):
            for (_, i), lin in zip(shapes, linears):
                lin(torch.ones(n, i, dtype=dtype))
        return run

    fns = {"fp32": (step([lambda x, w=w, b=b: torch.nn.functional.linear(x, w, b) for w, b in weights]), torch.float32),
           "bf16": (step([lambda x, w=w, b=b: torch.nn.functional.linear(x, w, b)
                          for w, b in ((w.bfloat16(), b.bfloat16()) for w, b in weights)]), torch.bfloat16),
           "int8": (step([Int8Linear(w, b) for w, b in weights]), torch.float32)}
    rng = random.Random(0)
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "products": 300, "rows": [200, 600],
              "seconds": {}}
    for name, (fn, dtype) in fns.items():
        times = {"fresh shapes": [], "bucketed": [], "one shape": []}
        for _ in range(args.rounds):
            sizes = [rng.randint(200, 600) for _ in range(300)]  # new sizes every round: not cached before
            plans = {"fresh shapes": sizes, "bucketed": [bucket_rows(n) for n in sizes], "one shape": [400] * 300}
            for kind, plan in plans.items():
                t = time.perf_counter()
                for n in plan:
                    fn(n, dtype)
                times[kind].append(time.perf_counter() - t)
        result["seconds"][name] = {k: statistics.median(v) for k, v in times.items()}
        print(name, {k: round(v, 3) for k, v in result["seconds"][name].items()}, flush=True)
    if args.json:
        from earlytag.storage import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
