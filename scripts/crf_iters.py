"""Choose the mean-field iterations of a CRF model by measurement: dev F1 at full depth with Viterbi and with
mean-field decoding for M = 0 (the emissions alone) ... 5, and with token exit at one threshold. Blockwise
decoding (mean-field M, then exact decoding of the runs of words where mean-field doubts) is scored refining
every batch, whatever its sentences' length (blockwise_from 0), so that the figure is the refinement's own.

    python scripts/crf_iters.py models/minilm-ner-crf models/minilm-ner-crf-perlayer --data uner-en-ewt:dev \
        --out docs/bench/crf-iters.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from earlytag import Tagger  # noqa: E402
from earlytag.bench import machine_info  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="uner-en-ewt:dev")
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--blockwise-iters", type=int, nargs="*", default=[0, 1, 3],
                    help="blockwise decoding from mean-field with these M")
    ap.add_argument("--threshold", type=float, default=0.1, help="token exit setting also scored (window 2)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        tagger = Tagger.from_pretrained(model)
        tagger.model.head.blockwise_from = 0  # blockwise refines every batch (set_decoding keeps it)
        dataset = tagger.load(args.data)
        runs = ([("viterbi", 3)] + [("meanfield", m) for m in args.iters]
                + [("blockwise", m) for m in args.blockwise_iters])
        for decode, iters in runs:
            tagger.set_decoding(decode, iters)
            row = {"model": model, "decode": decode, "meanfield_iters": iters if decode != "viterbi" else None,
                   "head": tagger.model.head.describe()}
            for name, exit in (("full", {"policy": "none"}),
                               ("token", {"policy": "token", "threshold": args.threshold, "window": 2})):
                r = tagger.evaluate(dataset, exit=exit)
                row[name] = {"f1": r["f1"], "flops_speedup": r["flops_speedup"]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result = {"command": "python scripts/crf_iters.py " + " ".join(argv or sys.argv[1:]), "data": args.data,
              "threshold": args.threshold, "machine": machine_info(), "load_average": os.getloadavg(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
