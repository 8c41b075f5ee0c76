"""The batch-1 climb graph of the ONNX Runtime backend, branching (layers after the first in nested If branches:
nothing runs once every word has halted; what the backend runs) against unrolled (every layer runs, on zero rows
once every word has halted; what it ran before), on the same sentences one at a time, in alternating passes:
time per sentence, their ratio, and a check that both give the same tags, exit layers and statistics
(docs/results.md section 4).

    python scripts/climb_branching.py models/minilm-ner-uniform-6ep --precisions fp32 int8 \
        --thresholds 0 0.02 0.05 0.1 0.15 0.2 --out docs/bench/climb-branching-minilm-ner-uniform-6ep
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from earlytag import Tagger
from earlytag.bench import machine_info, prebuilt_batches
from earlytag.engine import ExitConfig
from earlytag.engine.policies import ExitPolicy
from earlytag.storage import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="uner-en-ewt:test")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--out", required=True, help="directory for climb-branching.json and climb-branching.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for precision in args.precisions:
        tagger = Tagger.from_pretrained(args.model, backend="onnxruntime", precision=precision)
        docs = [s.tokens for s in tagger.load(args.data, limit=args.sentences).sentences]
        batches, _ = prebuilt_batches(tagger, docs, 1)
        layers = tagger.engine.layers
        for tau in args.thresholds:
            policy = ExitPolicy(ExitConfig("token", threshold=tau, window=args.window), tagger.num_layers)
            times: dict[bool, list[float]] = {True: [], False: []}
            outputs: dict[bool, list] = {}
            for _ in range(args.passes + 1):  # the first pass warms up (and exports) both graphs
                for branching in (True, False):
                    layers.branching = branching
                    start = time.perf_counter()
                    out = [layers.climb(b, policy) for b in batches]
                    times[branching].append((time.perf_counter() - start) / len(batches) * 1e3)
                    outputs[branching] = out
            # pred, score, exit, statistics: all equal but the scores, within float32 rounding (two graphs)
            same = all(a[0].equal(b[0]) and a[2].equal(b[2]) and torch.allclose(a[1], b[1], atol=1e-5)
                       and a[3].tolist() == b[3].tolist() for a, b in zip(outputs[True], outputs[False]))
            # the words' mean exit layer and the sentences that end at each layer (the last layer any word reaches)
            exits = [a[2][0] for a in outputs[True]]
            ends = [int(e.max()) for e in exits]
            ms = {k: statistics.median(v[1:]) for k, v in times.items()}
            rows.append({"precision": precision, "threshold": tau, "branching_ms": ms[True], "unrolled_ms": ms[False],
                         "unrolled_over_branching": ms[False] / ms[True], "same_outputs": same,
                         "mean_exit_layer": float(torch.cat(exits).float().mean()) + 1,
                         "sentences_ending_at": [ends.count(layer) for layer in range(tagger.num_layers)],
                         "passes": {"branching": times[True][1:], "unrolled": times[False][1:]}})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "passes"}))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "data": args.data, "sentences": len(batches), "window": args.window,
              "passes": args.passes, "rows": rows, "machine": machine_info()}
    atomic_write_text(out / "climb-branching.json", json.dumps(result, indent=2) + "\n")
    machine = result["machine"]
    lines = [f"{args.model}, token exit k={args.window}, {len(batches)} sentences of {args.data} one at a time "
             f"(`OnnxLayers.climb`), median of {args.passes} alternating passes, one thread, "
             f"{machine.get('cpu_capability', '?')}, load average {machine.get('load_average', ['?'])[0]}:", "",
             "| precision | τ | mean exit layer | sentences ending at layer 1, 2, … | branching (ms) | unrolled (ms) "
             "| unrolled / branching | same outputs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['threshold']:g} | {r['mean_exit_layer']:.2f} | "
                     f"{', '.join(map(str, r['sentences_ending_at']))} | {r['branching_ms']:.3f} | "
                     f"{r['unrolled_ms']:.3f} | {r['unrolled_over_branching']:.2f}x | "
                     f"{'yes' if r['same_outputs'] else 'NO'} |")
    atomic_write_text(out / "climb-branching.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
