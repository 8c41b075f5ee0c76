"""What `earlytag calibrate` chooses for a target speed-up on dev data, and what that choice scores on test: one
row per way of calibrating (the grid alone, τ refined between its steps, floors searched too).

    python scripts/calibrate_check.py models/e5-cws-uniform-distill uner-zh-gsdsimp:dev uner-zh-gsdsimp:test \
        --target 3 --variants '{"refine": 0}' '{"refine": 3}' '{"refine": 3, "min_layer": [1, 2]}' \
        --out docs/bench/calibrate-e5-cws-uniform-distill-3x.json

Each variant is the keyword arguments of :func:`earlytag.calibrate.calibrate` (in memory: nothing is stored in the
model directory). Scores and FLOPs only: no timing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from earlytag import Tagger  # noqa: E402
from earlytag.calibrate import calibrate  # noqa: E402
from earlytag.report import markdown_table  # noqa: E402
from earlytag.storage import atomic_write_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("dev")
    ap.add_argument("test")
    ap.add_argument("--target", type=float, required=True, help="FLOPs speed-up asked of calibrate")
    ap.add_argument("--variants", nargs="+", default=['{"refine": 0}', '{"refine": 3}'],
                    help="JSON keyword arguments of calibrate(), one per row")
    ap.add_argument("--out", required=True, help="JSON; a markdown table is written beside it (.md)")
    args = ap.parse_args()
    tagger = Tagger.from_pretrained(args.model)
    dev, test = tagger.load(args.dev), tagger.load(args.test)
    full = tagger.evaluate(test, exit="none")["score"]
    rows = []
    for text in args.variants:
        options = json.loads(text)
        result = calibrate(tagger, dev, args.target, **options)
        scored = tagger.evaluate(test, exit=result.exit)
        rows.append({"options": options, "exit": result.exit.to_dict(), "setting": result.exit.describe(),
                     "candidates": len(result.table), "dev_score": result.score,
                     "dev_flops_speedup": result.flops_speedup, "test_score": scored["score"],
                     "test_flops_speedup": scored["flops_speedup"]})
        print(rows[-1], file=sys.stderr, flush=True)
    out = {"model": args.model, "dev": args.dev, "test": args.test, "target": args.target,
           "test_full_depth": full, "rows": rows}
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    table = markdown_table(
        ["calibrate with", "settings tried", "choice", "dev score", "dev FLOPs speed-up", "test score",
         "test FLOPs speed-up", "test loss from full depth"],
        [[", ".join(f"{k}={v}" for k, v in r["options"].items()), r["candidates"], r["setting"],
          f"{100 * r['dev_score']:.2f}", f"{r['dev_flops_speedup']:.2f}x", f"{100 * r['test_score']:.2f}",
          f"{r['test_flops_speedup']:.2f}x", f"{100 * (r['test_score'] - full):+.2f}"] for r in rows])
    atomic_write_text(Path(args.out).with_suffix(".md"), table + f"\n\nTest full depth: {100 * full:.2f}.\n")


if __name__ == "__main__":
    main()
