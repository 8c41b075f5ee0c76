"""Mean-field decoding's probabilities through ``exp`` against ``exp2`` (earlytag.model.crf.meanfield_probs reads
them as ``2^(x·log2 e)``: on a CPU torch's ``exp2`` runs several times faster than its ``exp``).

    python scripts/meanfield_exp2_ab.py models/minilm-ner-crf-lr1e-2 --out docs/bench/meanfield-exp2-ab.txt

The model's own last-layer emissions on the test set laid end to end into documents (as
scripts/crf_decode_bench.py --emissions), batch 32, half the sentences half as long; both versions on the same
tensors in alternating passes (shuffled order), one torch thread; labels compared word for word and the largest
difference of the probabilities printed. Prints a text table (also written to --out).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from crf_decode_bench import alternating_times, documents, model_emissions  # noqa: E402  (scripts/)

from earlytag.bench import machine_info  # noqa: E402
from earlytag.model import crf  # noqa: E402
from earlytag.model.tagger import EarlyExitTagger  # noqa: E402
from earlytag.storage import atomic_write_text  # noqa: E402


def with_exp(emit, mask, trans, start, end, iters):
    """``crf.meanfield_probs`` as it was before ``exp2``: the same steps with ``exp``."""
    logits = crf._meanfield_logits(emit, mask, trans, start, end, iters)
    z = logits - logits.amax(1, keepdim=True)
    probs = z.exp()
    best = probs.sum(1, keepdim=True).reciprocal_()
    probs.mul_(best)
    return best.squeeze(1), crf._first_top(z, 1), probs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="uner-en-ewt:test")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024])
    ap.add_argument("--iters", type=int, nargs="+", default=[0, 1, 3])
    ap.add_argument("--passes", type=int, default=15)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    head = EarlyExitTagger.from_pretrained(args.model).head
    trans, start, end = (t.detach() for t in head.params(head.transitions.shape[0] - 1))
    sentences = model_emissions(args.model, args.data)
    rng = random.Random(0)
    lines = ["| words | M | exp (ms) | exp2 (ms) | exp time / exp2 time | labels as exp | largest probability difference |",
             "|---|---|---|---|---|---|---|"]
    with torch.inference_mode():
        for n in args.lengths:
            emit = documents(sentences, 32, n)
            mask = torch.ones(32, n, dtype=torch.bool)
            mask[1::2, n // 2:] = False
            for iters in args.iters:
                a = with_exp(emit, mask, trans, start, end, iters)
                b = crf.meanfield_probs(emit, mask, trans, start, end, iters)
                fns = {"exp": lambda e=emit, w=mask, m=iters: with_exp(e, w, trans, start, end, m),
                       "exp2": lambda e=emit, w=mask, m=iters: crf.meanfield_probs(e, w, trans, start, end, m)}
                med = {k: statistics.median(v) * 1e3
                       for k, v in alternating_times(fns, args.passes, max(2, 4000 // n), rng).items()}
                lines.append(f"| {n} | {iters} | {med['exp']:.3f} | {med['exp2']:.3f} | {med['exp'] / med['exp2']:.2f}x | "
                             f"{'yes' if torch.equal(a[1], b[1]) else 'no'} | {float((a[2] - b[2]).abs().max()):.1e} |")
                print(lines[-1], file=sys.stderr)
    m = machine_info()
    lines.append(f"python scripts/meanfield_exp2_ab.py {' '.join(argv or sys.argv[1:])}; {m['cpus']} CPUs "
                 f"({m['cpu_capability']}), torch {m['torch']}, 1 thread, batch 32, median of {args.passes} alternating "
                 f"passes, load average {os.getloadavg()[0]:.2f} at the end.")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
