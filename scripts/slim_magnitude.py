"""The baseline of issue 13: prune a fully trained model by weight magnitude (no retraining) at the ratios a slim
training uses, and save it: `python scripts/slim_magnitude.py models/minilm-ner models/minilm-ner-mag
--slim heads=0.33,ffn=0.4`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from earlytag import Tagger  # noqa: E402
from earlytag.errors import EarlytagError  # noqa: E402
from earlytag.model.slim import SlimSpec, prune_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split(":")[0])
    ap.add_argument("model")
    ap.add_argument("output")
    ap.add_argument("--slim", default="heads=0.33,ffn=0.4")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlytag model already in OUTPUT")
    args = ap.parse_args(argv)
    tagger = Tagger.from_pretrained(args.model)
    record = prune_model(tagger.model, SlimSpec.parse(args.slim))
    tagger.model.config.training = dict(tagger.config.training or {}, made_by="scripts/slim_magnitude.py "
                                        + " ".join(argv or sys.argv[1:]))
    try:
        tagger.save_pretrained(args.output, overwrite=args.overwrite)
    except EarlytagError as err:  # e.g. a model already there without --overwrite: one line, nothing written
        print(f"slim_magnitude: {err}", file=sys.stderr)
        return 2
    print(f"{args.output}: heads per layer {[len(h) for h in record['heads']]}, FFN widths {record['ffn']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
