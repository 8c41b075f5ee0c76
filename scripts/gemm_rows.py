#!/usr/bin/env python
"""GEMM throughput against the number of rows, at the FFN shapes of the two encoders.

    python scripts/gemm_rows.py --json docs/bench/gemm-rows.json

Early exit shrinks the rows a layer multiplies (active tokens), not its weights. On a CPU, a GEMM on a few rows
is bound by reading the weight matrix, not by arithmetic: this measures how far below peak each row count runs
(FFN-in projection, d -> 4d, with bias, as ``F.linear`` runs it in the engine). As in the engine's layer loop,
consecutive calls use the weights of consecutive layers (one matrix per layer of the encoder), so a matrix is
not still in the core's cache from the call before. Median of repeated timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {"all-MiniLM-L6-v2 (384 -> 1536, 6 layers)": (384, 1536, 6),
          "all-mpnet-base-v2 (768 -> 3072, 12 layers)": (768, 3072, 12)}
ROWS = (1, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def gflops(rows: int, d: int, f: int, layers: int, repeats: int = 7) -> float:
    x = torch.randn(rows, d)
    weights = [(torch.randn(f, d), torch.randn(f)) for _ in range(layers)]
    inner = max(1, 400 // rows)  # passes over all layers per timing
    times = []
    with torch.inference_mode():
        for w, b in weights:
            F.linear(x, w, b)
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                for w, b in weights:
                    F.linear(x, w, b)
            times.append((time.perf_counter() - t0) / (inner * layers))
    return 2 * rows * d * f / statistics.median(times) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json")
    args = p.parse_args()
    result = {"torch_threads": torch.get_num_threads(), "rows": list(ROWS),
              "gflops": {name: [round(gflops(r, d, f, n), 1) for r in ROWS] for name, (d, f, n) in SHAPES.items()}}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
