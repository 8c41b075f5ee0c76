"""Where the time of one sentence goes with the ONNX Runtime backend (batch 1), against ONNX Runtime's own
full-depth graph of the same model (the ort-fp32 / ort-int8 peer of ``earlytag bench``): the backend's full-depth
graph exported without the statistics it counts (``plan.sentence_counts``) and with them, each in a session of its
own; then the backend's session call alone, ``OnnxLayers.climb`` (the call plus its inputs and outputs), and
``Engine.run`` (plus the policy and the output), timed one sentence at a time in alternation (docs/results.md
section 4).

    python scripts/engine_overhead.py models/minilm-ner-ss --precision int8 --out docs/bench/engine-overhead
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from earlytag import Tagger
from earlytag.bench import machine_info, prebuilt_batches
from earlytag.engine import ExitConfig
from earlytag.engine.backends import _Truncated, quantize_graph
from earlytag.engine.policies import ExitPolicy
from earlytag.peers import OrtPeer, export_onnx, ort_session
from earlytag.storage import atomic_write_text


class _WithoutCounts(_Truncated):
    """The full-depth graph as before it counted the sentence's statistics: what the counting nodes cost."""

    def forward(self, input_ids, word_pos):
        return super().forward(input_ids, word_pos)[:2]


def without_counts(tagger, precision: str, workdir: Path):
    """A session of the full-depth graph without its statistics, exported (and quantized) as the backend does."""
    path = export_onnx(_WithoutCounts(tagger.model, tagger.num_layers).eval(),
                       (torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([1, 2])), workdir / "plain.onnx",
                       ["input_ids", "word_pos"], ["pred", "score"],
                       {"input_ids": {1: "t"}, "word_pos": {0: "w"}, "pred": {0: "w"}, "score": {0: "w"}})
    if precision != "fp32":
        if precision != "int8":
            raise SystemExit("--precision: fp32 or int8")
        path = quantize_graph(tagger.model, path, workdir / "plain-int8.onnx")  # as the backend quantizes it
    return ort_session(path, 1)


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
    with tempfile.TemporaryDirectory(prefix="earlytag-overhead-") as tmp:  # the sessions keep what they loaded
        plain = without_counts(tagger, args.precision, Path(tmp))
        peer = OrtPeer(Tagger.from_pretrained(args.model), args.precision == "int8", Path(tmp), 1)

    def call(s):
        return lambda b: s.run(None, {"input_ids": b.input_ids.numpy(), "word_pos": b.word_pos[0].numpy()})

    suffix = "" if args.precision == "fp32" else f"-{args.precision}"
    own = ort_session(layers.root / f"depth{tagger.num_layers}{suffix}.onnx", 1)  # the same graph, its own session
    # the first two each have a session of their own (a session that runs three times per sentence, as the last
    # three share one, is faster on its later calls): they compare the graph with and without its statistics
    pieces = {f"{peer.name} peer (its full-depth graph and the argmax)": peer.run_batch,
              "graph without the statistics": call(plain), "graph with them": call(own), "session call": call(session),
              "OnnxLayers.climb": lambda b: layers.climb(b, policy), "Engine.run": lambda b: engine.run(b, cfg)}
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
