"""Mean-field decoding with the tag scheme's forbidden steps as a finite penalty (issue 12: mean-field is ~2 F1 below
Viterbi; Viterbi forbids the steps the scheme breaks, mean-field reads the learned transitions alone).

    python scripts/meanfield_penalty.py models/minilm-ner-crf-lr1e-2 --data uner-en-ewt:dev \
        --json docs/bench/meanfield-penalty.json

For each number of updates M and penalty P, mean-field decodes at full depth with ``P/|NEG|`` times the head's
forbidden-step penalties (``CRFHead.penalty``, ``start_penalty``, ``end_penalty``: ``NEG`` where the scheme forbids
a step) added to its learned transitions and start/end scores; P = 0 is what ``--decode meanfield`` runs. Viterbi
(which adds the full NEG) is the reference. Scores only; one torch thread.
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
from earlytag.model import crf  # noqa: E402
from earlytag.storage import atomic_write_text  # noqa: E402


def with_penalty(head, p: float):
    """``head._all`` with ``p`` per forbidden step added to the unconstrained parameters (what mean-field reads)."""
    plain = type(head)._all.__get__(head)
    scale = p / abs(crf.NEG)

    def _all(constrained: bool):
        tr, st, en = plain(constrained)
        if constrained or p == 0:
            return tr, st, en
        return tr + head.penalty * scale, st + head.start_penalty * scale, en + head.end_penalty * scale
    return _all


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="uner-en-ewt:dev")
    ap.add_argument("--iters", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--penalties", type=float, nargs="+", default=[0, 0.5, 1, 2, 4, 8, 1e4])
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tagger = Tagger.from_pretrained(args.model)
    head = tagger.model.head
    if head.kind != "crf":
        ap.error(f"{args.model}: not a CRF model (its head is {head.kind})")
    data = tagger.load(args.data)

    def f1(decode: str, iters: int, p: float) -> float:
        head.configure(decode=decode, meanfield_iters=iters)
        head._all = with_penalty(head, p)
        try:
            return tagger.evaluate(data, exit={"policy": "none"})["f1"]
        finally:
            del head._all  # the class's method again

    rows = [{"decode": "viterbi", "meanfield_iters": None, "penalty": None, "f1": f1("viterbi", 3, 0)}]
    for iters in args.iters:
        for p in args.penalties:
            rows.append({"decode": "meanfield", "meanfield_iters": iters, "penalty": p, "f1": f1("meanfield", iters, p)})
            print(f"M={iters} P={p:g}: {100 * rows[-1]['f1']:.2f}", file=sys.stderr)
    out = {"command": "python scripts/meanfield_penalty.py " + " ".join(argv or sys.argv[1:]), "model": args.model,
           "data": args.data, "machine": machine_info(), "load_average": os.getloadavg(), "rows": rows}
    atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
