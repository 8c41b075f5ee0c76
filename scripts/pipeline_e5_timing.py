"""Issue 17: wall-clock of Chinese NER on raw text, two ways — the character model, or the segmenter then the word
model (scripts/pipeline_e5.py scores both) — timed on the same test sentences in batches of 32, each way in
alternation with the character model at full depth (earlytag.bench.paired: median of the per-pass ratios).
Tagging starts from character sentences and ends with one tag per character, so the pipeline's work between its
models (characters -> words -> character tags) is inside its time.

    python scripts/pipeline_e5_timing.py --out docs/bench/e5-pipeline-timing.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from pipeline_e5 import model_args, setting  # the same models, data and settings as the scored run

from earlytag import Tagger
from earlytag.bench import machine_info, paired
from earlytag.pipeline import SegmentThenTag
from earlytag.storage import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_args(ap)
    ap.add_argument("--sentences", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    chars, segmenter, words = (Tagger.from_pretrained(p) for p in (args.chars, args.segmenter, args.words))
    sentences = chars.load(args.data).sentences[: args.sentences]
    bs = args.batch_size
    units = [sentences[i:i + bs] for i in range(0, len(sentences), bs)]

    def characters(tau):
        return lambda unit: chars.predict_words([s.tokens for s in unit], setting(tau), bs)

    def pipeline(seg_tau, tau):
        pipe = SegmentThenTag(segmenter, words, setting(seg_tau))
        return lambda unit: pipe.tag_characters(unit, setting(tau), bs)

    contenders = [("characters", None, None, characters(None)), ("characters", None, 0.1, characters(0.1)),
                  ("segmenter + words", None, None, pipeline(None, None)),
                  ("segmenter + words", 0.3, 0.1, pipeline(0.3, 0.1))]
    base = characters(None)
    rows = []
    for way, seg_tau, tau, run in contenders:
        timing = paired(base, run, units, args.repeats)
        rows.append({"way": way, "segmenter_tau": seg_tau, "tagger_tau": tau, "wall_speedup": timing.speedup,
                     "passes": timing.ratios, "ms_per_sentence": 1e3 * timing.seconds / len(sentences)})
        print(f"{way} seg τ={seg_tau} τ={tau}: {timing.speedup:.2f}x the character model at full depth "
              f"({rows[-1]['ms_per_sentence']:.1f} ms per sentence)", file=sys.stderr, flush=True)
    out = {"data": args.data, "sentences": len(sentences), "batch_size": bs, "repeats": args.repeats,
           "models": {"characters": args.chars, "segmenter": args.segmenter, "words": args.words},
           "machine": machine_info(), "rows": rows}
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
