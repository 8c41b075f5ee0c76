"""Issue 17: Chinese NER on raw text, two ways — a model that tags characters, or a segmenter then a model
trained on words — at full depth and with token exit, scored the same way (entity F1 over characters).

    python scripts/pipeline_e5.py --out docs/bench/e5-pipeline.json

Cost is FLOPs relative to the character model at full depth on the same sentences (the pipeline pays for both
of its models). Scores and FLOPs only: no timing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from earlytag import Tagger  # noqa: E402
from earlytag.engine import ExitConfig  # noqa: E402
from earlytag.pipeline import SegmentThenTag  # noqa: E402
from earlytag.storage import atomic_write_text  # noqa: E402


def setting(tau: float | None) -> ExitConfig | str:
    return "none" if tau is None else ExitConfig("token", threshold=tau, window=2)


def model_args(ap: argparse.ArgumentParser) -> None:
    """The three models and the data, as this script and scripts/pipeline_e5_timing.py take them."""
    ap.add_argument("--chars", default="models/e5-ner", help="the NER model on characters")
    ap.add_argument("--segmenter", default="models/e5-cws")
    ap.add_argument("--words", default="models/e5-ner-words", help="the NER model on words")
    ap.add_argument("--data", default="uner-zh-gsdsimp:test")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_args(ap)
    ap.add_argument("--taus", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.3, 0.4])
    ap.add_argument("--segmenter-taus", nargs="+", type=float, default=[0.1, 0.3])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    chars, segmenter, words = (Tagger.from_pretrained(p) for p in (args.chars, args.segmenter, args.words))
    data = chars.load(args.data)
    docs = [s.tokens for s in data.sentences]
    full = chars.predict_words(docs, "none").stats.flops_full  # the unit of cost
    rows = []
    for tau in [None, *args.taus]:
        r = chars.evaluate(data, exit=setting(tau))
        rows.append({"way": "characters", "tagger_tau": tau, "segmenter_tau": None, "f1": r["f1"],
                     "cost": 1 / r["flops_speedup"], "tagger_flops_speedup": r["flops_speedup"]})
        print(f"characters τ={tau}: F1 {100 * r['f1']:.2f} cost {rows[-1]['cost']:.3f}", file=sys.stderr, flush=True)
    words_alone = words.evaluate(args.data)  # the word model on the data's own words: what segmentation costs
    for seg_tau in [None, *args.segmenter_taus]:
        pipe = SegmentThenTag(segmenter, words, setting(seg_tau))
        for tau in [None, *args.taus]:
            r = pipe.evaluate(args.data, exit=setting(tau))
            rows.append({"way": "segmenter + words", "tagger_tau": tau, "segmenter_tau": seg_tau, "f1": r["f1"],
                         "cost": r["flops"] / full, "segmentation_f1": r["segmentation"]["f1"],
                         "segmenter_flops_speedup": r["segmenter"]["flops_speedup"],
                         "tagger_flops_speedup": r["tagger"]["flops_speedup"],
                         "tagger_cost": r["tagger"]["flops"] / full, "segmenter_cost": r["segmenter"]["flops"] / full})
            print(f"pipeline seg τ={seg_tau} τ={tau}: F1 {100 * r['f1']:.2f} (seg {100 * r['segmentation']['f1']:.2f})"
                  f" cost {rows[-1]['cost']:.3f}", file=sys.stderr, flush=True)
    out = {"data": args.data, "models": {"characters": args.chars, "segmenter": args.segmenter, "words": args.words},
           "sentences": len(docs), "words_model_on_gold_words_f1": words_alone["f1"], "rows": rows}
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
