"""Token exit with an asymmetric window — word j halts when the max uncertainty over words j-kl..j+kr is below τ —
probed against the symmetric windows of the exit rule (scores and FLOPs only, interpolated at 2x/3x).

    python scripts/exit_asymmetric.py models/e5-cws-uniform-distill uner-zh-gsdsimp:dev --min-layer 2 \
        --out docs/bench/e5-cws-uniform-distill-asymmetric-dev.json

A segmenter's B/M/E/S tag hangs on the characters beside it, one side more than the other, so the question is
whether a one-sided window buys speed at equal F1. The probe swaps the engine's window rule
(``earlytag.engine.policies.window_max``) for the run; kl = kr = k is the engine's own rule (checked: the same
score at 3x as ``exit_windows.py --windows 1 --min-layers 2``; at 2x the interpolation from full depth to the grid's
first τ differs). Not an exit setting: it measured worse (docs/results.md section 10).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from shifted_streams import interpolate  # noqa: E402  (the script's own folder is on the path)

import earlytag.engine.policies as policies  # noqa: E402
from earlytag import Tagger  # noqa: E402
from earlytag.engine import ExitConfig  # noqa: E402
from earlytag.report import markdown_table  # noqa: E402
from earlytag.storage import atomic_write_text  # noqa: E402

SIDES = {"kl": 1, "kr": 1}


def one_sided_max(values, word_mask, k):
    """Max of ``values (B, W)`` over words j-kl..j+kr (padding words count as 0); ``k`` is ignored."""
    kl, kr = SIDES["kl"], SIDES["kr"]
    x = F.pad(values.masked_fill(~word_mask, 0.0).unsqueeze(1), (kl, kr))  # (B, 1, kl + W + kr)
    return F.max_pool1d(x, kernel_size=kl + kr + 1, stride=1).squeeze(1)  # (B, W)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--windows", nargs="+", default=["1,1", "0,1", "1,0", "0,2", "1,2", "2,1"], help="kl,kr pairs")
    ap.add_argument("--min-layer", type=int, default=1)
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6])
    ap.add_argument("--targets", nargs="+", type=float, default=[2.0, 3.0])
    ap.add_argument("--out", required=True, help="JSON; a markdown table is written beside it (.md)")
    args = ap.parse_args()
    tagger = Tagger.from_pretrained(args.model)
    data = tagger.load(args.data)
    full = tagger.evaluate(data, exit="none")["score"]
    policies.window_max = one_sided_max
    curves = []
    for pair in args.windows:
        SIDES["kl"], SIDES["kr"] = (int(x) for x in pair.split(","))
        points = [(1.0, full)]
        for tau in args.thresholds:
            r = tagger.evaluate(data, exit=ExitConfig("token", threshold=tau, window=1, min_layer=args.min_layer))
            points.append((r["flops_speedup"], r["score"]))
        curves.append({**SIDES, "points": points, "at": {f"{t:g}": interpolate(points, t) for t in args.targets}})
        print(pair, curves[-1]["at"], file=sys.stderr, flush=True)
    out = {"model": args.model, "data": args.data, "full_depth": full, "min_layer": args.min_layer,
           "taus": args.thresholds, "curves": curves}
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    rows = [[f"j-{c['kl']}..j+{c['kr']}", *("-" if v is None else f"{100 * v:.2f}" for v in c["at"].values())]
            for c in curves]
    table = markdown_table(["window", *(f"at {t:g}x FLOPs" for t in args.targets)], rows)
    atomic_write_text(Path(args.out).with_suffix(".md"), table + f"\n\nFull depth: {100 * full:.2f}.\n")


if __name__ == "__main__":
    main()
