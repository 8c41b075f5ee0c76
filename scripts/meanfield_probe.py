"""Two ways tried to make mean-field decoding (earlytag.model.crf.meanfield_probs) faster on a CPU, timed against
it and against Viterbi on the same tensors (issue 12's target: mean-field >= 10x Viterbi at 512+ words):

- ``compiled``: the same function through ``torch.compile`` (inductor, dynamic shapes; the first call's compile
  time is printed apart);
- ``labels-outer``: the update laid out ``(C, B, W)`` instead of ``(B, C, W)``: the softmax over labels becomes
  elementwise over C planes and each update's messages one matrix product over all words of the batch.

    python scripts/meanfield_probe.py --out docs/bench/meanfield-probe.txt

Random emissions (scaled by 3) and transitions, 7 labels, batch 32, half the sentences half as long, one torch
thread, median of alternating passes (shuffled order). Prints a text table (also written to --out).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from crf_decode_bench import alternating_times  # noqa: E402  (scripts/, beside this file)

from earlytag.model import crf  # noqa: E402


def labels_outer(emit, mask, trans, start, end, iters):
    """``crf.meanfield_probs`` for shared transitions ``(C, C)`` computed in a ``(C, B, W)`` layout; returns the
    same ``(best, labels, probs)``, ``probs`` as a ``(B, C, W)`` view."""
    b, w, c = emit.shape
    base = torch.mm(torch.eye(c, dtype=emit.dtype), emit.reshape(b * w, c).t()).view(c, b, w)  # (C, B, W)
    rows = torch.arange(b)
    last = (mask.sum(1) - 1).clamp(min=0)  # (B,)
    live = mask[:, 0].to(emit.dtype)  # (B,)
    base[:, :, 0] += start[:, None] * live
    base[:, rows, last] += end[:, None] * live
    m = mask.to(emit.dtype)  # (B, W)
    both = torch.cat([trans.t(), trans])  # (2C, C)
    logits = base
    for _ in range(iters):
        q = (logits - logits.amax(0)).exp_()  # (C, B, W)
        q.mul_(m / q.sum(0))  # the softmax over labels, nothing on padding
        msgs = torch.mm(both, q.view(c, b * w)).view(2 * c, b, w)  # forward and backward messages, one product
        logits = base.clone()
        logits[..., 1:] += msgs[:c, :, :-1]
        logits[..., :-1] += msgs[c:, :, 1:]
    z = logits - logits.amax(0)
    probs = z.exp()
    best = probs.sum(0, keepdim=True).reciprocal_()
    probs.mul_(best)
    return best.squeeze(0), crf._first_top(z.permute(1, 0, 2), 1), probs.permute(1, 0, 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 512, 1024])
    ap.add_argument("--iters", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--passes", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    c, batch = 7, 32
    trans, start, end = torch.randn(c, c, generator=g), torch.randn(c, generator=g), torch.randn(c, generator=g)
    t0 = time.perf_counter()
    compiled = torch.compile(crf.meanfield_probs, dynamic=True)
    lines = []
    rng = random.Random(0)
    with torch.inference_mode():
        warm = torch.randn(batch, 64, c, generator=g)
        for iters in args.iters:
            compiled(warm, torch.ones(batch, 64, dtype=torch.bool), trans, start, end, iters)
        lines.append(f"torch.compile: {time.perf_counter() - t0:.1f} s to compile ({len(args.iters)} iteration counts)")
        lines.append("| words | M | eager (ms) | compiled (ms) | labels-outer (ms) | viterbi (ms) | compiled time / eager time | "
                     "labels-outer time / eager time | viterbi / eager | viterbi / labels-outer | labels as eager |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for n in args.lengths:
            emit = torch.randn(batch, n, c, generator=g) * 3
            mask = torch.ones(batch, n, dtype=torch.bool)
            mask[1::2, n // 2:] = False
            for iters in args.iters:
                a = (emit, mask, trans, start, end, iters)
                fns = {"eager": lambda a=a: crf.meanfield_probs(*a), "compiled": lambda a=a: compiled(*a),
                       "labels-outer": lambda a=a: labels_outer(*a), "viterbi": lambda a=a: crf.viterbi(*a[:5])}
                same = all(bool((fns[k]()[1] == fns["eager"]()[1])[mask].all()) for k in ("compiled", "labels-outer"))
                times = alternating_times(fns, args.passes, max(2, 2000 // n), rng)
                ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                lines.append(f"| {n} | {iters} | {ms['eager']:.3f} | {ms['compiled']:.3f} | {ms['labels-outer']:.3f} | "
                             f"{ms['viterbi']:.3f} | {ms['compiled'] / ms['eager']:.2f}x | "
                             f"{ms['labels-outer'] / ms['eager']:.2f}x | {ms['viterbi'] / ms['eager']:.1f}x | "
                             f"{ms['viterbi'] / ms['labels-outer']:.1f}x | {'yes' if same else 'NO'} |")
                print(lines[-1], file=sys.stderr)
    lines.append(f"python scripts/meanfield_probe.py {' '.join(argv or sys.argv[1:])}; torch {torch.__version__}, "
                 f"1 thread, batch {batch}, {c} labels, median of {args.passes} alternating passes, "
                 f"load average {os.getloadavg()[0]:.2f} at the end.")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
