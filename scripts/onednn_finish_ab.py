"""The onednn backend's layer finish with the residual sums and GELU inside oneDNN's products
(``_FusedLayer._onednn_finish``) against the plain finish (``model.layers.finish`` with each product in oneDNN), on
the same engine and batches in alternating passes: engine time only, batch 32, full depth and token exit
(docs/results.md section 4).

    OMP_NUM_THREADS=1 python scripts/onednn_finish_ab.py models/minilm-ner-uniform-6ep models/mpnet-ner-ss \
        --out docs/bench/onednn-finish-ab.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from earlytag import Tagger
from earlytag.bench import machine_info, prebuilt_batches
from earlytag.engine import ExitConfig
from earlytag.storage import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="uner-en-ewt:test")
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--passes", type=int, default=6)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    lines = [f"Engine time per pass over the first {args.sentences} test sentences at batch {args.batch_size}, "
             f"median of {args.passes} alternating passes (each order in turn), one thread; "
             f"{info['cpu_capability']}, torch {info['torch']}, load average {info.get('load_average', ['?'])[0]}.",
             "", "| model | setting | fused finish (s) | plain finish (s) | plain / fused | same tags |",
             "|---|---|---|---|---|---|"]
    for path in args.models:
        tagger = Tagger.from_pretrained(path, backend="onednn")
        docs = [s.tokens for s in tagger.load(args.data).sentences][: args.sentences]
        batches, _ = prebuilt_batches(tagger, docs, args.batch_size)
        engine = tagger.engine
        layers = [engine._layer(i) for i in range(tagger.num_layers)]
        if not all(fl._finish == fl._onednn_finish for fl in layers):
            raise SystemExit(f"{path}: the fused finish is not in use (not the exact GELU?)")
        fused = [fl._finish for fl in layers]

        def use(on: bool, layers=layers, fused=fused) -> None:
            for fl, f in zip(layers, fused):
                fl._finish = f if on else fl._plain_finish

        for cfg in (ExitConfig(), ExitConfig("token", threshold=0.1, window=2)):
            times: dict[bool, list[float]] = {True: [], False: []}
            tags = {}
            for r in range(args.passes + 1):
                for on in ((True, False) if r % 2 else (False, True)):
                    use(on)
                    t0 = time.perf_counter()
                    outs = [engine.run(b, cfg) for b in batches]
                    if r:  # the first round warms up
                        times[on].append(time.perf_counter() - t0)
                    tags[on] = [o.pred for o in outs]
            use(True)
            same = all(torch.equal(a, b) for a, b in zip(tags[True], tags[False]))
            f, p = statistics.median(times[True]), statistics.median(times[False])
            lines.append(f"| {os.path.basename(path.rstrip('/'))} | {cfg.describe()} | {f:.3f} | {p:.3f} | "
                         f"{p / f:.3f}x | {'yes' if same else 'no'} |")
            print(lines[-1], flush=True)
    atomic_write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
