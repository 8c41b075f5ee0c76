"""Token exit's window and upper-half multiplier, swept: score against FLOPs speed-up for each (k, multiplier),
interpolated at 2x/3x/4x.

    python scripts/exit_windows.py models/e5-cws uner-zh-gsdsimp:test --out docs/bench/e5-cws-windows.json
    python scripts/exit_windows.py models/e5-ner uner-zh-gsdsimp:dev --windows 1 2 4 --targets 2 \
        --thresholds 0.04 0.07 0.1 0.15 0.2 0.3 --out docs/bench/e5-ner-windows-dev.json   (and :test)

The paper's rule (and the default) is k=2 with τ on the lower half of the layers and 2τ on the upper half; a
segmenter's B/M/E/S tags depend on the characters right beside them, so other windows may trade differently.
``--min-layers M ...`` adds a floor: no character halts before layer M (the exit setting ``min_layer``,
``--min-layer`` on the CLI: τ = 0 on the layers below it), for models whose lowest heads are weak;
``--early-multipliers F ... --early-until E`` scales τ on the layers from the floor up to layer E by F (F > 1: the
first layers above the floor let more words go, F < 1: fewer). Scores and FLOPs only: no timing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from shifted_streams import interpolate  # noqa: E402  (the script's own folder is on the path)

from earlytag import Tagger  # noqa: E402
from earlytag.engine import ExitConfig  # noqa: E402
from earlytag.report import markdown_table  # noqa: E402
from earlytag.storage import atomic_write_text  # noqa: E402

TAUS = (0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 0.9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--windows", nargs="+", type=int, default=[0, 1, 2, 4])
    ap.add_argument("--multipliers", nargs="+", type=float, default=[2.0, 1.0])
    ap.add_argument("--targets", nargs="+", type=float, default=[2.0, 3.0, 4.0])
    ap.add_argument("--thresholds", nargs="+", type=float, default=list(TAUS), help="the τ swept for each curve")
    ap.add_argument("--min-layers", nargs="+", type=int, default=[1],
                    help="the first layer at which a word may halt (1: any; M: τ = 0 below layer M)")
    ap.add_argument("--early-multipliers", nargs="+", type=float, default=[1.0],
                    help="τ times this on the layers from the floor up to --early-until")
    ap.add_argument("--early-until", type=int, default=3, help="the last layer the early multiplier applies to")
    ap.add_argument("--criteria", nargs="+", default=["entropy"], choices=["entropy", "maxprob"],
                    help="the uncertainty each curve halts on (normalised entropy, the paper; or 1 - max probability)")
    ap.add_argument("--out", required=True, help="JSON; a markdown table is written beside it (.md)")
    args = ap.parse_args()
    tagger = Tagger.from_pretrained(args.model)
    data = tagger.load(args.data)
    full = tagger.evaluate(data, exit="none")["score"]
    curves = []
    layers = tagger.num_layers
    for k, m, low, early, crit in itertools.product(args.windows, args.multipliers, args.min_layers,
                                                    args.early_multipliers, args.criteria):
        points = [(1.0, full)]
        for tau in args.thresholds:
            cfg = ExitConfig("token", threshold=tau, window=k, upper_multiplier=m, min_layer=low, criterion=crit)
            if early != 1.0:  # per layer: τ·early from the floor up to early_until
                taus = [t * early if i + 1 <= args.early_until else t for i, t in enumerate(cfg.thresholds(layers))]
                cfg = ExitConfig("token", threshold=taus, window=k, min_layer=low, criterion=crit)
            r = tagger.evaluate(data, exit=cfg)
            points.append((r["flops_speedup"], r["score"]))
        curves.append({"window": k, "upper_multiplier": m, "min_layer": low, "early_multiplier": early,
                       "criterion": crit, "points": points, "at": {f"{t:g}": interpolate(points, t) for t in args.targets}})
        print(f"k={k} x{m:g} from layer {low} early x{early:g} {crit}: "
              + " ".join(f"{t}: {v}" for t, v in curves[-1]["at"].items()), file=sys.stderr, flush=True)
    out = {"model": args.model, "data": args.data, "full_depth": full, "taus": args.thresholds, "curves": curves}
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    floors = args.min_layers != [1]  # the column only where a floor was swept (the tables written before it)
    early = args.early_multipliers != [1.0]
    crits = args.criteria != ["entropy"]
    rows = [[c["window"], f"τ, {c['upper_multiplier']:g}τ", *([c["min_layer"]] if floors else []),
             *([f"{c['early_multiplier']:g}τ"] if early else []), *([c["criterion"]] if crits else []),
             *("-" if v is None else f"{100 * v:.2f}" for v in c["at"].values())] for c in curves]
    table = markdown_table(["window k", "lower half, upper half", *(["halts from layer"] if floors else []),
                            *([f"τ up to layer {args.early_until}"] if early else []),
                            *(["uncertainty"] if crits else []),
                            *(f"at {t:g}x FLOPs" for t in args.targets)], rows)
    atomic_write_text(Path(args.out).with_suffix(".md"), table + f"\n\nFull depth: {100 * full:.2f}.\n")


if __name__ == "__main__":
    main()
