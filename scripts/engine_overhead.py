"""Where the time of one sentence goes with the ONNX Runtime backend (batch 1): the graph's session call alone,
``OnnxLayers.climb`` (the call plus its inputs and outputs), and ``Engine.run`` (plus the policy, the output buffers
and the per-batch statistics and FLOPs), timed one sentence at a time in alternation (docs/results.md section 4).

    python scripts/engine_overhead.py models/minilm-ner-ss --precision int8 --out docs/bench/engine-overhead
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from earlytag import Tagger
from earlytag.bench import machine_info, prebuilt_batches
from earlytag.engine import ExitConfig
from earlytag.engine.policies import ExitPolicy
from earlytag.storage import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="uner-en-ewt:test")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", required=True, help="directory for overhead.json and overhead.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tagger = Tagger.from_pretrained(args.model, backend="onnxruntime", precision=args.precision)
    docs = [s.tokens for s in tagger.load(args.data).sentences[: args.sentences]]
    batches, _ = prebuilt_batches(tagger, docs, 1)
    cfg = ExitConfig()  # full depth: the climb's plain graph
    policy = ExitPolicy(cfg, tagger.num_layers)
    engine, layers = tagger.engine, tagger.engine.layers
    session = layers._truncated_session(tagger.num_layers)

    def session_only(b):
        session.run(None, {"input_ids": b.input_ids.numpy(), "word_pos": b.word_pos[0].numpy()})

    pieces = {"session call": session_only, "OnnxLayers.climb": lambda b: layers.climb(b, policy),
              "Engine.run": lambda b: engine.run(b, cfg)}
    for b in batches[:10]:  # warm-up
        for f in pieces.values():
            f(b)
    total = dict.fromkeys(pieces, 0.0)
    for _ in range(args.repeats):
        for b in batches:
            for name, f in pieces.items():
                t0 = time.perf_counter()
                f(b)
                total[name] += time.perf_counter() - t0
    ms = {name: 1e3 * t / args.repeats / len(batches) for name, t in total.items()}
    result = {"model": args.model, "precision": args.precision, "sentences": len(batches), "repeats": args.repeats,
              "ms_per_sentence": ms, "machine": machine_info()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "overhead.json", json.dumps(result, indent=2) + "\n")
    rows = ["| piece | ms per sentence |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in ms.items()]
    md = (f"{args.model}, {args.precision}, full depth, {len(batches)} sentences one at a time, {args.repeats} "
          f"passes, one thread, load average {result['machine'].get('load_average', ['?'])[0]}:\n\n" + "\n".join(rows))
    atomic_write_text(out / "overhead.md", md + "\n")
    print(md)


if __name__ == "__main__":
    main()
