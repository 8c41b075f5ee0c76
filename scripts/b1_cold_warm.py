"""What the bench's alternation costs a batch-1 graph: the ONNX Runtime backend's one-call graphs (full depth, and
the token-exit climb at a few τ) timed per sentence warm — each setting through a block of sentences on its own — and
cold — with earlytag's torch fp32 full depth run before every sentence, as ``bench`` alternates unit by unit
(docs/results.md section 4).

    OMP_NUM_THREADS=1 python scripts/b1_cold_warm.py models/minilm-ner-uniform-6ep --precisions fp32 int8 \
        --out docs/bench/b1-cold-warm-minilm-ner-uniform-6ep.md
"""

from __future__ import annotations

import argparse
import statistics
import time

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
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.02, 0.1, 0.25])
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--block", type=int, default=25, help="sentences per warm block")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = Tagger.from_pretrained(args.model)  # torch fp32: what runs between the sentences in "cold"
    full = ExitConfig()
    info = machine_info()
    lines = [f"`{args.model}`, the first {args.sentences} test sentences one at a time, ms per sentence (median of "
             f"{args.passes} passes) of the ONNX Runtime backend's one call; warm: each setting through blocks of "
             f"{args.block} sentences on its own; cold: earlytag's torch fp32 full depth run before every sentence "
             f"(not timed). One thread, {info['cpu_capability']}, load average "
             f"{info.get('load_average', ['?'])[0]}.", "",
             "| precision | setting | FLOPs speed-up | warm (ms) | cold (ms) | cold / warm | wall/FLOPs warm | "
             "wall/FLOPs cold |", "|---|---|---|---|---|---|---|---|"]
    for precision in args.precisions:
        tagger = Tagger.from_pretrained(args.model, precision=precision, backend="onnxruntime")
        docs = [s.tokens for s in tagger.load(args.data).sentences][: args.sentences]
        batches, _ = prebuilt_batches(tagger, docs, 1)
        layers = tagger.engine.layers
        cfgs = [full] + [ExitConfig("token", threshold=t, window=2) for t in args.thresholds]
        policies = [ExitPolicy(c, tagger.num_layers) for c in cfgs]
        flops = []
        for p in policies:  # the FLOPs speed-up of each setting over these sentences (and a warm-up)
            counts = [layers.climb(b, p)[3] for b in batches]
            flops.append(sum(c[1] for c in counts) / sum(c[0] for c in counts))
        warm = {i: [] for i in range(len(policies))}
        cold = {i: [] for i in range(len(policies))}
        for _ in range(args.passes):
            for i, p in enumerate(policies):
                t = 0.0
                for s in range(0, len(batches), args.block):
                    t0 = time.perf_counter()
                    for b in batches[s:s + args.block]:
                        layers.climb(b, p)
                    t += time.perf_counter() - t0
                warm[i].append(t)
                t = 0.0
                for b in batches:
                    base.engine.run(b, full)
                    t0 = time.perf_counter()
                    layers.climb(b, p)
                    t += time.perf_counter() - t0
                cold[i].append(t)
        w = [statistics.median(warm[i]) / len(batches) * 1e3 for i in range(len(policies))]
        c = [statistics.median(cold[i]) / len(batches) * 1e3 for i in range(len(policies))]
        for i, cfg in enumerate(cfgs):
            lines.append(f"| {precision} | {cfg.describe()} | {flops[i]:.2f}x | {w[i]:.3f} | {c[i]:.3f} | "
                         f"{c[i] / w[i]:.2f} | {w[0] / w[i] / flops[i]:.2f} | {c[0] / c[i] / flops[i]:.2f} |")
            print(lines[-1], flush=True)
    atomic_write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
