"""The C allocator kept from trimming freed memory (earlytag.allocator, what every CLI verb now does) against
glibc's defaults, on the engine: `earlytag bench` run in separate processes, alternately with
EARLYTAG_KEEP_FREED_MEMORY=0 (plain) and unset (kept), ROUNDS times each (the setting is per process, so the
two cannot alternate inside one run); each run's wall-clock speed-ups are against its own fp32 full depth.

    python scripts/allocator_ab.py models/minilm-ner-uniform-6ep --out docs/bench/allocator-ab.json

Writes the per-round rows and a summary: for every setting, the median over rounds of wall/FLOPs (wall-clock
speed-up over the FLOPs speed-up, each against the same precision's full depth) with the allocator plain and
kept, and the same for the wall-clock speed-up against fp32 full depth. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def bench_args(thresholds: list[str], batch_sizes: list[str], limit: int) -> list[str]:
    return ["--policies", "token", "--thresholds", *thresholds, "--batch-sizes", *batch_sizes, "--precisions", "fp32",
            "bf16", "--limit", str(limit), "--timing-limit", str(limit), "--timing-limit-b1", str(min(limit, 200)),
            "--threads", "1", "--quiet"]


def run(model: str, data: str, out: Path, kept: bool, args: list[str]) -> list[dict]:
    env = dict(os.environ, EARLYTAG_KEEP_FREED_MEMORY="1" if kept else "0", OMP_NUM_THREADS="1")
    subprocess.run(["earlytag", "bench", model, data, "--out", str(out), *args], env=env, check=True)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["machine"]["keep_freed_memory_mb"] is not None) == kept, "the setting did not reach the run"
    return json.loads((out / "results.json").read_text())


def key(row: dict) -> str:
    return f"{row['describe']} | {row['precision']} | batch {row['batch_size']}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="uner-en-ewt:test")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--thresholds", nargs="+", default=["0.1", "0.3"])
    ap.add_argument("--batch-sizes", nargs="+", default=["1", "32"])
    ap.add_argument("--limit", type=int, default=500, help="sentences scored and timed (batch 1: at most 200)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    bench = bench_args(args.thresholds, args.batch_sizes, args.limit)
    rounds: dict[str, list[list[dict]]] = {"plain": [], "kept": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for name in ("plain", "kept"):
                rows = run(args.model, args.data, Path(tmp) / f"{name}{i}", name == "kept", bench)
                rounds[name].append([r for r in rows if r.get("wall_over_flops") is not None])
                print(f"round {i + 1} {name} done", file=sys.stderr)
    summary = []
    for row in rounds["plain"][0]:
        k = key(row)
        pick = {name: [next(r for r in rs if key(r) == k) for rs in rounds[name]] for name in rounds}
        med = {name: {f: round(statistics.median(r[f] for r in rs), 3)
                      for f in ("wall_over_flops", "wall_speedup")} for name, rs in pick.items()}
        summary.append({"setting": k, "flops_speedup": row["flops_speedup"], "score": row["score"],
                        "wall_over_flops": {n: med[n]["wall_over_flops"] for n in med},
                        "wall_speedup_vs_fp32": {n: med[n]["wall_speedup"] for n in med}})
    from earlytag.bench import machine_info

    result = {"command": "python scripts/allocator_ab.py " + " ".join(argv or sys.argv[1:]), "bench_args": bench,
              "rounds": args.rounds, "machine": machine_info(), "summary": summary, "runs": rounds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for s in summary:
        print(f"{s['setting']}: wall/FLOPs plain {s['wall_over_flops']['plain']} kept {s['wall_over_flops']['kept']}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
