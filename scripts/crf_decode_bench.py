"""Decoding time of a batch of 32 sentences against sentence length: argmax (softmax head), Viterbi, exact
marginals (forward-backward) and mean-field with M = 1..5 updates (earlytag.model.crf).

    python scripts/crf_decode_bench.py --out docs/bench/crf-decode.json [--model models/minilm-ner-crf]

Emissions and transitions are random (or the model's learned transitions with --model), C = the model's labels
(7 for UNER without a model). Every contender runs on the same tensors in alternating passes (the order shuffled
per pass); the figure is the median over passes of the per-call time. One torch thread unless --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from earlytag.bench import machine_info  # noqa: E402
from earlytag.model import crf  # noqa: E402

LENGTHS = (16, 32, 64, 128, 256, 512, 1024)


def contenders(trans, start, end, trans_c, start_c, end_c):
    out = {"argmax": lambda e, m: e.max(-1).indices,  # the softmax head's labels (the engine's flat rows)
           "viterbi": lambda e, m: crf.viterbi(e, m, trans_c, start_c, end_c)[0],
           "forward-backward": lambda e, m: crf.marginals(e, m, trans, start, end)}
    for iters in range(1, 6):
        out[f"meanfield-{iters}"] = lambda e, m, k=iters: crf.best_labels(crf.meanfield_labels_first(e, m, trans, start, end, k), 1)[1]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="take the labels and learned transitions of this CRF model")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    if args.model:
        from earlytag.model.tagger import EarlyExitTagger

        head = EarlyExitTagger.from_pretrained(args.model).head
        last = head.transitions.shape[0] - 1
        trans, start, end = (t.detach() for t in head.params(last))
        trans_c, start_c, end_c = (t.detach() for t in head.params(last, constrained=True))
    else:
        c = 7
        trans, start, end = torch.randn(c, c, generator=g), torch.randn(c, generator=g), torch.randn(c, generator=g)
        trans_c, start_c, end_c = trans, start, end
    c = trans.shape[0]
    fns = contenders(trans, start, end, trans_c, start_c, end_c)
    rows = []
    rng = random.Random(0)
    with torch.inference_mode():
        for n in args.lengths:
            emit = torch.randn(args.batch, n, c, generator=g) * 3
            mask = torch.ones(args.batch, n, dtype=torch.bool)
            mask[1::2, n // 2:] = False  # half the sentences half as long: padding is handled as in real batches
            calls = max(1, int(2000 / n))  # enough calls per pass for a measurable time
            times = {name: [] for name in fns}
            for fn in fns.values():  # warm-up
                fn(emit, mask)
            for _ in range(args.passes):
                names = list(fns)
                rng.shuffle(names)
                for name in names:
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        fns[name](emit, mask)
                    times[name].append((time.perf_counter() - t0) / calls)
            med = {name: statistics.median(v) for name, v in times.items()}
            row = {"words": n, "batch": args.batch, "labels": c, "ms": {k: round(v * 1e3, 4) for k, v in med.items()},
                   "viterbi_over_meanfield3": round(med["viterbi"] / med["meanfield-3"], 2),
                   "spread": {k: round((max(v) - min(v)) / statistics.median(v), 3) for k, v in times.items()}}
            rows.append(row)
            print(f"{n:5d} words: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in med.items())
                  + f" | viterbi/meanfield-3 {row['viterbi_over_meanfield3']:.1f}x", file=sys.stderr)
    result = {"command": "python scripts/crf_decode_bench.py " + " ".join(argv or sys.argv[1:]),
              "machine": machine_info(), "threads": args.threads, "passes": args.passes,
              "load_average": os.getloadavg(), "model": args.model, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
