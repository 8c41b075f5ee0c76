#!/usr/bin/env python
"""The batch-1 graphs of the ONNX Runtime backend (the token-exit climb, and full depth) as exported now against
their previous export (graphs v7), the same arithmetic in more nodes (issue 10, fixed per-step costs at batch 1).

    OMP_NUM_THREADS=1 python scripts/climb_ab.py models/minilm-ner-uniform-6ep --precisions fp32 int8 \
        --out docs/bench/climb-ab.md

Now: the exit head as ``backends._climb_head`` (the probabilities once, their max the score, no guard for a
log-probability of -inf, which a float32 head's finite logits never give), a sub-word's activity as
``active[tw] | ~is_word``, the band broadcasting the window's uncertainties, the halted words removed as
``active ^ halt``. Previous (:func:`previous_climb_layer`): the head as ``policies.head_scores`` (log-probabilities,
their exponent, the guard, the score as the exponent of the largest), ``is_word & active[tw] | ~is_word``, the
uncertainties unsqueezed before the band, ``active & ~halt``. Both are exported into their own cache directory; the
same sentences run one at a time through each session in alternating blocks of 25 (each side warm through its
block, the order swapped every pass), and the labels and exit layers of the two are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np
import onnxruntime as ort
import torch

from earlytag import Tagger
from earlytag.bench import machine_info, prebuilt_batches
from earlytag.engine import ExitConfig, backends
from earlytag.engine.policies import ExitPolicy, head_scores
from earlytag.model.layers import finish
from earlytag.storage import atomic_write_text


def previous_climb_layer(m, layer, state, consts, word_pos, taus, maxprob, live):
    """``backends._climb_layer`` as graphs v7 exported it."""
    h, active, unc, score, pred, exit_layer = state
    is_word, tw, band, pos = consts
    parts = m.adapter.layers[layer]
    if live is None:
        active_t = (is_word & active.index_select(0, tw)) | ~is_word  # (T,)
    else:
        active_t = (is_word & active.index_select(0, tw)) | (~is_word & live)
    rows = active_t.nonzero()
    flat = rows[:, 0]
    x = h.index_select(0, flat)
    if live is None:
        hk = h
    else:
        keys = torch.ones_like(is_word).logical_and(live).nonzero()[:, 0]
        hk = h.index_select(0, keys)
    bias = None
    if pos is not None:
        p = pos if parts.head_index is None else pos.index_select(0, parts.head_index)
        bias = p.index_select(1, flat) if live is None else p.index_select(1, flat).index_select(2, keys)
    ctx = backends._attend_rows(parts.query(x), parts.key(hk), parts.value(hk), bias, parts.num_heads,
                                parts.attn_size // parts.num_heads)
    h = backends._PutRows.apply(h, rows, finish(parts, ctx, x))
    s, p_, u = head_scores(m.heads[layer].linear(h.index_select(0, word_pos)))
    u = torch.where(maxprob, 1.0 - s, u)
    unc = torch.where(active, u, unc)
    pred = torch.where(active, p_, pred)
    score = torch.where(active, s, score)
    if layer < len(m.adapter.layers) - 1:
        halt = active & (torch.where(band, unc[None, :], 0.0).amax(1) < taus[layer])  # (W,)
        exit_layer = torch.where(halt, layer, exit_layer)
        active = active & ~halt
    return h, active, unc, score, pred, exit_layer


def sessions(model, precision: str, cache: Path, previous: bool) -> dict:
    """The climb and full-depth sessions of ``model`` (its fp32 weights; ONNX Runtime quantizes the graphs for int8),
    exported by the backend's code or by the previous one."""
    layers = backends.OnnxLayers(model, precision, cache=cache, threads=1)
    if not previous:
        return {"climb": layers._climb_session(), "full": layers._truncated_session(model.num_layers)}
    with patch.object(backends, "_climb_layer", previous_climb_layer), \
            patch.object(backends, "_climb_head", lambda logits, num_labels: head_scores(logits)):
        return {"climb": layers._climb_session(), "full": layers._truncated_session(model.num_layers)}


def nodes(session_path: Path) -> int:
    """Nodes of a graph after ONNX Runtime's optimisation (its own count)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(session_path), opts, providers=["CPUExecutionProvider"])
        return len(onnx.load(opts.optimized_model_filepath, load_external_data=False).graph.node)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="uner-en-ewt:test")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.1, 0.25])
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tagger = Tagger.from_pretrained(args.model)  # fp32: OnnxLayers exports and quantizes from its weights
    docs = [s.tokens for s in tagger.load(args.data).sentences[: args.sentences]]
    batches, _ = prebuilt_batches(tagger, docs, 1)
    lines = ["| precision | graph | setting | nodes of a later layer's piece, previous → now | ms per sentence, "
             "previous | now | previous / now | same labels and exits |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            both = {k: sessions(tagger.model, precision, Path(tmp) / k, k == "previous") for k in ("previous", "now")}
            suffix = "" if precision == "fp32" else f"-{precision}"
            counts = {k: nodes(next((Path(tmp) / k).rglob(f"climb-next1{suffix}.onnx"))) for k in both}
            settings = [("full", None)] + [("climb", t) for t in args.thresholds]
            for graph, tau in settings:
                if graph == "full":
                    feeds = [{"input_ids": b.input_ids.numpy(), "word_pos": b.word_pos[0].numpy()} for b in batches]
                else:
                    taus = np.asarray(list(ExitPolicy(ExitConfig("token", threshold=tau, window=2),
                                                      tagger.num_layers)
                                           .taus), dtype=np.float32)
                    feeds = [{"input_ids": b.input_ids.numpy(), "token_word": b.token_word[0].numpy(),
                              "word_pos": b.word_pos[0].numpy(), "taus": taus, "window": np.asarray(2),
                              "maxprob": np.asarray(False)} for b in batches]
                runs = {k: both[k][graph] for k in both}
                outs = {k: [s.run(None, f) for f in feeds] for k, s in runs.items()}
                exits = 2 if graph == "climb" else 0  # the climb's outputs: pred, score, exit, counts
                same = all(np.array_equal(a[0], b[0]) and np.array_equal(a[exits], b[exits])
                           for a, b in zip(outs["previous"], outs["now"]))
                secs = {k: 0.0 for k in runs}
                per_pass = []
                for p in range(args.passes):
                    order = list(runs.items()) if p % 2 else list(reversed(runs.items()))
                    this = {k: 0.0 for k in runs}
                    for i in range(0, len(feeds), 25):
                        for k, s in order:
                            start = time.perf_counter()
                            for f in feeds[i:i + 25]:
                                s.run(None, f)
                            this[k] += time.perf_counter() - start
                    per_pass.append(this["previous"] / this["now"])
                    for k in runs:
                        secs[k] += this[k]
                ms = {k: 1e3 * v / args.passes / len(feeds) for k, v in secs.items()}
                setting = "full depth" if graph == "full" else f"token τ={tau:g} k=2"
                node_counts = f"{counts['previous']} → {counts['now']}" if graph == "climb" else "-"
                lines.append(f"| {precision} | {graph} | {setting} | {node_counts} | {ms['previous']:.3f} | "
                             f"{ms['now']:.3f} | {statistics.median(per_pass):.3f}x | {'yes' if same else 'no'} |")
                print(lines[-1], flush=True)
    m = machine_info()
    lines += ["", "python scripts/climb_ab.py " + " ".join(sys.argv[1:]) + f"; the first {len(batches)} sentences "
              f"of {args.data} one at a time, alternating blocks of 25, {args.passes} passes (previous / now: "
              f"the median of the passes' ratios); 1 thread, {m['cpus']} CPUs ({m['cpu_capability']}), onnxruntime "
              f"{ort.__version__}, load average {m['load_average'][0]} at the end."]
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
