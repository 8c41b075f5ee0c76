"""Where the ONNX Runtime whole-climb graph of one sentence spends its time (batch 1, token exit): ONNX Runtime's
own profiler on the climb graph, the run's time against the sum of its nodes' kernel times (the rest is the
runtime's work between nodes), and the operator types by kernel time (docs/results.md section 4). ``--graph``:
the branching climb the backend runs (``climb.onnx``: later layers in If branches) or the unrolled one
(``climb-unrolled.onnx``: every layer runs, on zero rows once every word has halted; what the backend ran
before the branching climb, and what docs/bench/climb-profile profiled).

    python scripts/profile_climb.py models/minilm-ner-ss --graph unrolled --thresholds 0.01 0.25 \
        --out docs/bench/climb-profile

The profiler adds its own cost to every node, so the share outside the kernels is an upper bound.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
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
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.25])
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("--graph", choices=["branching", "unrolled"], default="branching")
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--precision", default="fp32", help="fp32 | int8 | int8-mixed (the backend's climb graph in it)")
    ap.add_argument("--out", required=True, help="directory for climb-profile.json and climb-profile.md")
    args = ap.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(1)
    tagger = Tagger.from_pretrained(args.model, backend="onnxruntime", precision=args.precision)
    docs = [s.tokens for s in tagger.load(args.data).sentences[: args.sentences]]
    batches, _ = prebuilt_batches(tagger, docs, 1)
    layers = tagger.engine.layers
    layers.branching = args.graph == "branching"
    layers._climb_session()  # exported (and cached) as the backend uses it
    graph = "climb" if layers.branching else "climb-unrolled"
    graph += ".onnx" if args.precision == "fp32" else f"-{args.precision}.onnx"  # as the backend names them
    results = []
    for tau in args.thresholds:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        with tempfile.TemporaryDirectory() as tmp:
            opts.profile_file_prefix = str(Path(tmp) / "climb")
            session = ort.InferenceSession(str(layers.root / graph), sess_options=opts,
                                           providers=["CPUExecutionProvider"])
            policy = ExitPolicy(ExitConfig("token", threshold=tau, window=args.window), tagger.num_layers)
            for b in batches:
                session.run(None, {"input_ids": b.input_ids.numpy(), "token_word": b.token_word[0].numpy(),
                                   "word_pos": b.word_pos[0].numpy(),
                                   "taus": np.asarray(list(policy.taus), dtype=np.float32),
                                   "window": np.asarray(args.window), "maxprob": np.asarray(False)})
            events = json.loads(Path(session.end_profiling()).read_text())
        runs = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
        kernels = collections.Counter()
        calls = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                kernels[e["args"]["op_name"]] += e["dur"]
                calls[e["args"]["op_name"]] += 1
        n = len(batches)
        results.append({"threshold": tau, "run_us": statistics.mean(runs), "kernel_us": sum(kernels.values()) / n,
                        "nodes": sum(calls.values()) / n,
                        "ops": [[op, us / n, calls[op] / n] for op, us in kernels.most_common()]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "graph": graph, "precision": args.precision, "sentences": len(batches), "window": args.window, "profiles": results,
              "machine": machine_info()}
    atomic_write_text(out / "climb-profile.json", json.dumps(result, indent=2) + "\n")
    lines = [f"{args.model}, `{graph}` ({args.precision}), token exit k={args.window}, {len(batches)} sentences one at a time "
             f"under ONNX Runtime's profiler, one thread, load average {result['machine'].get('load_average', ['?'])[0]}:",
             "", "| τ | run (µs per sentence) | kernels | outside the kernels | nodes run | GEMM kernels | other kernels |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        gemm = sum(us for op, us, _ in r["ops"] if op in ("Gemm", "MatMul", "FusedMatMul"))
        lines.append(f"| {r['threshold']:g} | {r['run_us']:.0f} | {r['kernel_us']:.0f} | {r['run_us'] - r['kernel_us']:.0f} "
                     f"| {r['nodes']:.0f} | {gemm:.0f} ({100 * gemm / r['run_us']:.0f}% of the run) "
                     f"| {r['kernel_us'] - gemm:.0f} |")
    top = results[-1]
    lines += ["", f"Operator types by kernel time at τ={top['threshold']:g} (µs per sentence, nodes per sentence):", "",
              "| operator | µs | nodes |", "|---|---|---|"]
    lines += [f"| {op} | {us:.0f} | {k:.0f} |" for op, us, k in top["ops"][:12]]
    atomic_write_text(out / "climb-profile.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
