"""Issue 14: the controller's step size on short shifted streams (UNER EWT genres, pieces of 128 sentences).

    python scripts/controller_steps.py > docs/bench/controller-steps.txt

For three streams whose calibrated τ (from another genre) misses the target, four (gain, max_step) pairs of
SpeedController: realised FLOPs speed-up after the warm-up, F1, and the final τ, beside the fixed τ. Scores and
FLOPs only (no timing); one thread.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from shifted_streams import GENRES, genre, run  # noqa: E402

from earlytag import Tagger  # noqa: E402
from earlytag.engine import ExitConfig  # noqa: E402
from earlytag.engine.control import SpeedController  # noqa: E402

VARIANTS = [("g.8 m.7", {"gain": 0.8, "max_step": 0.7}), ("g.4 m.3", {"gain": 0.4, "max_step": 0.3}),
            ("g.3 m.15", {"gain": 0.3, "max_step": 0.15}), ("g.5 m.2", {"gain": 0.5, "max_step": 0.2})]
# (stream, start τ as calibrated on another genre, target)
CASES = (("weblog", 0.4, 3.0), ("weblog", 0.6, 4.0), ("newsgroup", 0.3, 3.0))


def main() -> None:
    torch.set_num_threads(1)
    tagger = Tagger.from_pretrained(str(ROOT / "models" / "minilm-ner-ss"))
    dev, test = tagger.load("uner-en-ewt:dev"), tagger.load("uner-en-ewt:test")
    by = {g: [s for s in dev.sentences + test.sentences if genre(s) == g] for g in GENRES}
    for g, tau, target in CASES:
        line = []
        for name, kw in VARIANTS:
            control = SpeedController(ExitConfig("token", threshold=tau, window=2), target, **kw)
            f1, _, state = run(tagger, by[g], control, 32, 128)
            line.append(f"{name}: {state['realised_speedup_after_warmup']:.2f} F1 {100 * f1:.2f} "
                        f"τend {state['threshold']:.3f}")
        f1, speed, _ = run(tagger, by[g], ExitConfig("token", threshold=tau, window=2), 32)
        print(g, tau, target, f"fixed {speed:.2f} F1 {100 * f1:.2f} |", " | ".join(line), flush=True)


if __name__ == "__main__":
    main()
