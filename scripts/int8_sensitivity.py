"""Where dynamic int8 loses its F1 (ONNX Runtime backend, full depth, batch 1): the model's full-depth graph
quantized to int8 with each layer's FFN output projection kept in float32 in turn (``int8-mixed`` keeps all of
them), scored on dev; then the two layers best on dev kept together, and the test scores of the choice next to
fp32, int8 and int8-mixed. Then the choice as the whole-climb graph with token exit at ``--thresholds``: test F1,
and its time per sentence against ONNX Runtime's own int8 full-depth graph (the ort-int8 peer of ``earlytag
bench``) and the plain int8 climb, one sentence at a time in alternation (docs/results.md section 4).

    python scripts/int8_sensitivity.py models/minilm-ner-ss --out docs/bench/int8-sensitivity
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import torch

from earlytag import Tagger
from earlytag.bench import machine_info, prebuilt_batches
from earlytag.engine import ExitConfig
from earlytag.engine.backends import quantize_graph
from earlytag.peers import OrtPeer, ort_session
from earlytag.storage import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--dev", default="uner-en-ewt:dev")
    ap.add_argument("--test", default="uner-en-ewt:test")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.02, 0.03])
    ap.add_argument("--sentences", type=int, default=200, help="test sentences timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", required=True, help="directory for int8-sensitivity.json and .md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fp32 = Tagger.from_pretrained(args.model, backend="onnxruntime")
    tagger = Tagger.from_pretrained(args.model, backend="onnxruntime", precision="int8")
    layers, depth = tagger.engine.layers, tagger.num_layers
    layers._truncated_session(depth)  # exported as the backend exports it
    src = layers.root / f"depth{depth}.onnx"
    parts = tagger.model.adapter.layers
    sets = {split: tagger.load(name) for split, name in (("dev", args.dev), ("test", args.test))}

    def score(model: Tagger, split: str) -> float:
        return 100 * model.evaluate(sets[split], exit={"policy": "none"}, batch_size=1)["score"]

    with tempfile.TemporaryDirectory() as tmp:
        def int8_keeping(float_layers: tuple[int, ...], split: str) -> float:
            """int8 with the FFN output projection of ``float_layers`` in float32, scored on ``split``."""
            name = "-".join(map(str, float_layers)) or "none"
            q = quantize_graph(tagger.model, src, Path(tmp) / f"keep-{name}.onnx",
                               [parts[k].ffn_out for k in float_layers])
            layers.sessions[("depth", depth)] = ort_session(q, 1)
            return score(tagger, split)

        every = tuple(range(depth))
        dev = {"fp32": score(fp32, "dev"), "int8": int8_keeping((), "dev"), "int8-mixed": int8_keeping(every, "dev")}
        single = {k: int8_keeping((k,), "dev") for k in every}
        best = tuple(sorted(sorted(every, key=lambda k: -single[k])[:2]))
        dev.update({f"int8, FFN output of layer {k} float": v for k, v in single.items()})
        chosen = f"int8, FFN output of layers {best[0]} and {best[1]} float"
        dev[chosen] = int8_keeping(best, "dev")
        test = {"fp32": score(fp32, "test"), "int8": int8_keeping((), "test"), "int8-mixed": int8_keeping(every, "test"),
                chosen: int8_keeping(best, "test")}
        timed = climb_against_peer(tagger, best, args, Path(tmp), sets["test"])
    result = {"model": args.model, "dev": dev, "test": test, "chosen_layers": list(best), "token_exit": timed,
              "machine": machine_info()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "int8-sensitivity.json", json.dumps(result, indent=2) + "\n")
    rows = [f"{args.model}, ONNX Runtime full depth at batch 1, entity F1 (layers counted from 0; the two layers "
            "chosen by their single-layer dev scores):", "", "| graph | dev | test |", "|---|---|---|"]
    rows += [f"| {k} | {v:.2f} | {test[k]:.2f} |" if k in test else f"| {k} | {v:.2f} | |" for k, v in dev.items()]
    rows += ["", f"The choice as the whole-climb graph with token exit (k=2), test F1 and ms per sentence, the first "
             f"{args.sentences} test sentences one at a time, {args.repeats - 1} passes after a warm-up pass, "
             f"load average {result['machine'].get('load_average', ['?'])[0]}:", "",
             "| τ | F1 | this climb (ms) | int8 climb (ms) | ort-int8 peer, full depth (ms) | peer / this climb |",
             "|---|---|---|---|---|---|"]
    rows += [f"| {r['threshold']:g} | {r['score']:.2f} | {r['ms']['chosen']:.2f} | {r['ms']['int8']:.2f} | "
             f"{r['ms']['peer']:.2f} | {r['ms']['peer'] / r['ms']['chosen']:.2f}x |" for r in timed]
    atomic_write_text(out / "int8-sensitivity.md", "\n".join(rows) + "\n")
    print("\n".join(rows))


def climb_against_peer(tagger: Tagger, float_layers: tuple[int, ...], args, tmp: Path, test) -> list[dict]:
    """The int8 climb graph with the FFN output of ``float_layers`` in float32: test F1 with token exit at each
    threshold, and its time against the plain int8 climb and the ort-int8 peer, sentence by sentence."""
    layers, parts = tagger.engine.layers, tagger.model.adapter.layers
    layers.branching = False  # the climb as one plain graph (every layer unrolled), which quantize_graph takes whole
    layers._climb_session()
    src = layers.root / "climb-unrolled.onnx"
    chosen = quantize_graph(tagger.model, src, tmp / "climb-chosen.onnx", [parts[k].ffn_out for k in float_layers])
    climbs = {"int8": layers.sessions["climb-unrolled"], "chosen": ort_session(chosen, 1)}
    peer = OrtPeer(Tagger.from_pretrained(args.model), True, tmp, 1)
    batches, _ = prebuilt_batches(tagger, [s.tokens for s in test.sentences[: args.sentences]], 1)
    out = []
    for tau in args.thresholds:
        cfg = ExitConfig("token", threshold=tau, window=2)
        layers.sessions["climb"] = climbs["chosen"]
        f1 = 100 * tagger.evaluate(test, exit=cfg, batch_size=1)["score"]
        total = collections.Counter()
        for rep in range(args.repeats):
            for b in batches:
                t0 = time.perf_counter()
                peer.run_batch(b)
                total["peer"] += (time.perf_counter() - t0) * (rep > 0)
                for name, session in climbs.items():
                    layers.sessions["climb"] = session
                    t0 = time.perf_counter()
                    tagger.engine.run(b, cfg)
                    total[name] += (time.perf_counter() - t0) * (rep > 0)
        n = len(batches) * (args.repeats - 1)
        out.append({"threshold": tau, "score": f1, "ms": {k: 1e3 * v / n for k, v in total.items()}})
    layers.sessions["climb"] = climbs["int8"]
    return out


if __name__ == "__main__":
    main()
