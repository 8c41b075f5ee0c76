"""One shifted stream under the speed controller, engine call by engine call (issue 14): what it ran and why.

    python scripts/controller_trace.py models/minilm-ner-ss --calibrated-on email --stream answers --target 3 \
        --order sorted --out docs/bench/controller-trace-email-answers-3x-sorted.txt

Calibrates on one genre's UNER EWT dev sentences and tags another genre's dev+test sentences as
``scripts/shifted_streams.py`` does (the same setting, pieces of 128 sentences, batch 32), printing after every
engine call the tokens so far, the τ it ran with, the FLOPs speed-up of the call, of the recent window and of the
stream since the warm-up, and the speed-up asked of the length profile next. (``--order shuffled`` shuffles with
its own seed: not the order of a shifted_streams.py run, whose random order is shared across its streams.) ``--options`` adds SpeedController
options as JSON (e.g. '{"window_band": 0.05}'): each set of options is traced in turn, the default first.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from shifted_streams import GENRES, calibration_table, genre, run, setting_for  # noqa: E402

from earlytag import Tagger  # noqa: E402
from earlytag.engine import ExitConfig  # noqa: E402
from earlytag.engine.control import LengthProfile, SpeedController  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--calibrated-on", choices=GENRES, required=True)
    ap.add_argument("--stream", choices=GENRES, required=True)
    ap.add_argument("--target", type=float, required=True)
    ap.add_argument("--order", choices=("file", "shuffled", "sorted"), default="sorted")
    ap.add_argument("--options", nargs="*", default=[], help="SpeedController options, one JSON object per trace")
    ap.add_argument("--out", help="also write the trace here")
    args = ap.parse_args()
    tagger = Tagger.from_pretrained(args.model)
    dev, test = tagger.load("uner-en-ewt:dev"), tagger.load("uner-en-ewt:test")
    stream = [s for s in dev.sentences + test.sentences if genre(s) == args.stream]
    if args.order == "sorted":
        stream.sort(key=len)
    elif args.order == "shuffled":
        random.Random(0).shuffle(stream)
    table = calibration_table(tagger, dev, args.calibrated_on)
    fixed = ExitConfig.from_dict(setting_for(table, args.target)["exit"])
    profile = LengthProfile.from_table(table, fixed)
    lines = [f"{args.calibrated_on} -> {args.stream}, target {args.target:g}x, {args.order}, {len(stream)} sentences; "
             f"start: {fixed.describe()}"]
    for options in [{}] + [json.loads(o) for o in args.options]:
        control = SpeedController(fixed, args.target, profile=profile, **options)
        lines.append(f"\noptions {json.dumps(options)}")
        lines.append(f"{'tokens':>7} {'tau':>6} {'call':>6} {'window':>6} {'since':>6} {'asked':>6}")
        observe = control.observe

        def traced(flops, full, tokens, control=control, observe=observe):
            observe(flops, full, tokens)
            lines.append(f"{control.total[2]:7d} {control.tau:6.3f} {full / flops:6.2f} {control.realised_window:6.2f} "
                         f"{control.realised_after_warmup:6.2f} {math.exp(control.log_ask):6.2f}")

        control.observe = traced
        score, _, state = run(tagger, stream, control, 32, 128)
        lines.append(f"after the warm-up {state['realised_speedup_after_warmup']:.2f}x, F1 {100 * score:.2f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        from earlytag.storage import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
