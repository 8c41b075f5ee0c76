#!/usr/bin/env python
"""The AdamW step of stage-1 training on a CPU: torch's multi-tensor (foreach) AdamW against its fused AdamW.

    python scripts/optimizer_step.py --json docs/bench/optimizer-step.json

Every training step updates every parameter of the unfrozen encoder, the word embeddings included (30,522 x 384
for all-MiniLM-L6-v2, half of its 22.6 M parameters), whichever words the batch held: a fixed cost per step that
structured slimming (issue 13) does not shrink. This times the optimizer step alone over the trainer's own
parameter groups (earlytag.train.trainer._optimizer, with the fused kernel switched on and off), for the unpruned
encoder and for one pruned at heads=0.33,ffn=0.4 (by weight magnitude: sizes are what count here), alternating
the two implementations pass by pass in one process; medians over the passes. One torch thread unless
OMP_NUM_THREADS / --threads says otherwise, as the training runs of docs/results.md section 9.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from earlytag.bench import machine_info
from earlytag.model.config import TaggerConfig
from earlytag.model.encoders import load_encoder
from earlytag.model.slim import SlimSpec, prune_model
from earlytag.model.tagger import EarlyExitTagger
from earlytag.train.trainer import TrainConfig, _optimizer

LABELS = ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]  # UNER's


def model_of(encoder_name: str, slim: str | None) -> EarlyExitTagger:
    encoder, _, _ = load_encoder(encoder_name)
    model = EarlyExitTagger(TaggerConfig(labels=LABELS, task="ner", input_scheme="iob2", label_scheme="iob2"),
                            encoder.config, encoder)
    if slim:
        prune_model(model, SlimSpec.parse(slim))
    return model


def time_steps(model: EarlyExitTagger, passes: int, steps: int) -> dict[str, list[float]]:
    """Seconds per optimizer step, per pass, for the foreach and the fused AdamW over the same gradients."""
    cfg = TrainConfig(train="-", output="-", lr=1e-4, head_lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    optimizers = {}
    for name, fused in (("foreach", False), ("fused", True)):
        opt = _optimizer(model, cfg)
        for group in opt.param_groups:
            group["fused"], group["foreach"] = fused or None, not fused
        opt.defaults["fused"], opt.defaults["foreach"] = fused or None, not fused
        opt.step()  # warm: allocates the moments
        optimizers[name] = opt
    out: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(passes):
        for name, opt in optimizers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            out[name].append((time.perf_counter() - t0) / steps)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default="all-MiniLM-L6-v2")
    p.add_argument("--slim", default="heads=0.33,ffn=0.4")
    p.add_argument("--passes", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per timed pass")
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for label, slim in (("unpruned", None), (f"slim {args.slim}", args.slim)):
        model = model_of(args.encoder, slim)
        times = time_steps(model, args.passes, args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"model": label, "parameters": sum(p.numel() for p in model.parameters()),
                     "seconds_per_step": {k: round(v, 4) for k, v in med.items()},
                     "fused_speedup": round(med["foreach"] / med["fused"], 2),
                     "passes": {k: [round(x, 4) for x in v] for k, v in times.items()}})
        print(f"{label}: foreach {med['foreach']:.4f} s, fused {med['fused']:.4f} s per step "
              f"({med['foreach'] / med['fused']:.1f}x)", flush=True)
    result = {"command": "python scripts/optimizer_step.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
              "encoder": args.encoder, "rows": rows, "machine": machine_info()}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
