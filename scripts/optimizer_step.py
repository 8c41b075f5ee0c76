#!/usr/bin/env python
"""The AdamW step of stage-1 training on a CPU: torch's multi-tensor (foreach) AdamW against its fused AdamW.

    python scripts/optimizer_step.py --json docs/bench/optimizer-step.json --data-dir ../shared/data

Every training step updates every parameter of the unfrozen encoder, the word embeddings included (30,522 x 384
for all-MiniLM-L6-v2, half of its 22.6 M parameters), whichever words the batch held: a fixed cost per step that
structured slimming (issue 13) does not shrink. This times the optimizer step alone over the trainer's own
parameter groups (earlytag.train.trainer._optimizer, with the fused kernel switched on and off), for the unpruned
encoder and for one pruned at heads=0.33,ffn=0.4 (by weight magnitude: sizes are what count here), alternating
the two implementations pass by pass in one process; medians over the passes. Then whole training steps
(forward, backward, gradient clipping, optimizer step: the trainer's loop) on real batches of 32 UNER EWT training
sentences, the encoder trained, again alternating the two optimizers over the same batches: what the optimizer's
share is of a step. One torch thread unless OMP_NUM_THREADS / --threads says otherwise, as the training runs of
docs/results.md section 9.
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


def model_of(encoder_name: str, slim: str | None):
    encoder, tokenizer, _ = load_encoder(encoder_name)
    model = EarlyExitTagger(TaggerConfig(labels=LABELS, task="ner", input_scheme="iob2", label_scheme="iob2"),
                            encoder.config, encoder)
    if slim:
        prune_model(model, SlimSpec.parse(slim))
    return model, tokenizer


def optimizers_of(model: EarlyExitTagger) -> dict[str, torch.optim.Optimizer]:
    """The trainer's optimizer over ``model`` twice: with the multi-tensor kernel and with the fused one."""
    cfg = TrainConfig(train="-", output="-", lr=1e-4, head_lr=1e-3)
    out = {}
    for name, fused in (("foreach", False), ("fused", True)):
        opt = _optimizer(model, cfg)
        for group in opt.param_groups:
            group["fused"], group["foreach"] = fused or None, not fused
        out[name] = opt
    return out


def time_steps(model: EarlyExitTagger, passes: int, steps: int) -> dict[str, list[float]]:
    """Seconds per optimizer step, per pass, for the foreach and the fused AdamW over the same gradients."""
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    optimizers = optimizers_of(model)
    for opt in optimizers.values():
        opt.step()  # warm: allocates the moments
    out: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(passes):
        for name, opt in optimizers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            out[name].append((time.perf_counter() - t0) / steps)
    return out


def time_training(model: EarlyExitTagger, tokenizer, data: str, data_dir: str | None, passes: int,
                  steps: int) -> dict[str, list[float]]:
    """Seconds per whole training step, per pass, with each optimizer, on the same ``steps`` batches."""
    import random

    from earlytag.data.batching import Featurizer, collate
    from earlytag.data.datasets import load_dataset
    from earlytag.train.trainer import _batches

    sentences = load_dataset(data, "ner", data_dir=data_dir).sentences
    index = {lab: i for i, lab in enumerate(LABELS)}
    featurizer = Featurizer(tokenizer, 512, 0)
    windows = featurizer.windows([s.tokens for s in sentences], [[index[t] for t in s.tags] for s in sentences])
    batches = [collate([windows[i] for i in idx], featurizer.pad_id)
               for idx in _batches(windows, 32, random.Random(0))[:steps]]
    model.train()
    optimizers = optimizers_of(model)
    params = [p for p in model.parameters() if p.requires_grad]
    out: dict[str, list[float]] = {name: [] for name in optimizers}
    for k in range(passes + 1):  # the first pass warms up (allocates the moments), not counted
        for name in sorted(optimizers, reverse=k % 2 == 1):  # the order alternates from pass to pass
            opt = optimizers[name]
            t0 = time.perf_counter()
            for b in batches:
                loss = model(b.input_ids, b.attention_mask, b.word_pos, labels=b.labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            if k:
                out[name].append((time.perf_counter() - t0) / len(batches))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default="all-MiniLM-L6-v2")
    p.add_argument("--slim", default="heads=0.33,ffn=0.4")
    p.add_argument("--passes", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per timed pass")
    p.add_argument("--threads", type=int)
    p.add_argument("--data", default="uner-en-ewt:train", help="the batches of the whole-step timing")
    p.add_argument("--data-dir")
    p.add_argument("--train-steps", type=int, default=8, help="batches per timed pass of whole steps (0: none)")
    p.add_argument("--train-passes", type=int, default=6)
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for label, slim in (("unpruned", None), (f"slim {args.slim}", args.slim)):
        model, tokenizer = model_of(args.encoder, slim)
        times = time_steps(model, args.passes, args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"model": label, "parameters": sum(p.numel() for p in model.parameters()),
               "seconds_per_step": {k: round(v, 4) for k, v in med.items()},
               "fused_speedup": round(med["foreach"] / med["fused"], 2),
               "passes": {k: [round(x, 4) for x in v] for k, v in times.items()}}
        print(f"{label}: foreach {med['foreach']:.4f} s, fused {med['fused']:.4f} s per step "
              f"({med['foreach'] / med['fused']:.1f}x)", flush=True)
        if args.train_steps:
            whole = time_training(model, tokenizer, args.data, args.data_dir, args.train_passes, args.train_steps)
            wmed = {k: statistics.median(v) for k, v in whole.items()}
            row.update({"seconds_per_training_step": {k: round(v, 4) for k, v in wmed.items()},
                        "training_step_speedup": round(wmed["foreach"] / wmed["fused"], 3),
                        "training_passes": {k: [round(x, 4) for x in v] for k, v in whole.items()}})
            print(f"  whole training step: foreach {wmed['foreach']:.3f} s, fused {wmed['fused']:.3f} s "
                  f"({wmed['foreach'] / wmed['fused']:.2f}x)", flush=True)
        rows.append(row)
    result = {"command": "python scripts/optimizer_step.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k not in ("json", "data_dir")),
              "encoder": args.encoder, "rows": rows, "machine": machine_info()}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
