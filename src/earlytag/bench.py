"""``earlytag bench``: sweep exit settings, measure score, FLOPs speed-up and wall-clock speed-up.

For every policy and batch size, the full-depth baseline and each setting are timed in the same process
over the same pre-built batches (tokenisation and padding excluded), after a warm-up, as the median of
``repeats`` passes. ``wall_speedup`` is baseline time / setting time; the baseline is re-measured before
each policy's sweep so slow drift of a noisy machine does not pile up. Scores come from one pass over
all sentences (they do not depend on the batch size; ``tests/test_engine.py`` checks that).

Writes ``results.json`` (a list of rows), ``results.md`` and ``results.png`` (score vs speed-up) to ``--out``.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .api import Tagger
from .data.batching import collate, length_sorted_batches
from .engine import REGISTRY, ExitConfig, ExitStats
from .engine.policies import TARGETS
from .errors import ConfigError
from .metrics import task_scores
from .report import markdown_table
from .storage import atomic_write_text


def default_grid(policy: str, num_layers: int, kv: str = "keep", size: str = "default",
                 halted: str = "rescore") -> list[ExitConfig]:
    """The settings the bench sweeps for ``policy`` (each policy brings its own grid)."""
    rule = REGISTRY.get(policy)
    if rule is None:
        raise ConfigError("policies", f"unknown policy {policy!r}; expected one of {', '.join(REGISTRY)}")
    grid = rule.grid(num_layers, size, kv)
    if "halted" in rule.settings:
        for cfg in grid:
            cfg.halted = halted
    return grid


def row_key(cfg: ExitConfig) -> str:
    """The name of a setting's curve in the results: the policy, -drop for kv=drop, -frozen for halted=frozen."""
    rule = cfg.rule
    return (cfg.policy + ("-drop" if cfg.kv == "drop" and "kv" in rule.settings else "")
            + ("-frozen" if cfg.halted == "frozen" and "halted" in rule.settings else ""))


@dataclass
class BenchConfig:
    model: str
    data: str
    out: str
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    policies: list[str] = field(default_factory=lambda: ["static", "sentence", "token", "patience"])
    repeats: int = 3
    limit: int | None = None
    timing_limit: int | None = None  # batch sizes > 1 are timed on the first N sentences (default: all)
    timing_limit_b1: int | None = 400  # batch size 1 is timed on the first N sentences
    kv: list[str] = field(default_factory=lambda: ["keep"])
    halted: list[str] = field(default_factory=lambda: ["rescore"])  # token exit: rescore and/or frozen
    data_dir: str | None = None
    progress: bool = True
    target_speedup: float | None = None
    calibration_data: str | None = None
    label: str | None = None
    extra: list[ExitConfig] = field(default_factory=list)  # settings to add to the sweep
    grid: str = "default"  # default | small (fewer settings, for 12-layer models on a CPU)
    compare_models: list[str] = field(default_factory=list)  # other models timed at full depth (smaller models)
    refill: bool = True  # batch sizes > 1: the engine refills thin layers across consecutive batches
    refill_unit: int = 8  # batches per timed unit (the engine refills within a unit)


def _paired(tagger: Tagger, units: list[list], cfg: ExitConfig, repeats: int, refill: bool = False):
    """Time ``cfg`` against the full-depth baseline, unit by unit in alternation, ``repeats`` times.

    A unit is one batch (batch size 1) or a few consecutive batches that the engine may refill across
    (``Engine.run_many``). Alternating per unit makes both see the same machine state, so a noisy machine
    moves both alike. Returns (median of baseline/setting time ratios, median setting seconds, median
    baseline seconds, stats of the setting).
    """
    def base(unit):
        for b in unit:
            tagger.engine.run(b, _FULL)

    def setting(unit):
        if refill:
            return tagger.engine.run_many(unit, cfg)
        return [tagger.engine.run(b, cfg) for b in unit]

    for unit in units[: max(1, len(units) // 20)]:  # warm-up
        base(unit)
        setting(unit)
    ratios, secs, base_secs = [], [], []
    stats = ExitStats(tagger.num_layers)
    for r in range(repeats):
        tb = tc = 0.0
        for unit in units:
            t0 = time.perf_counter()
            base(unit)
            t1 = time.perf_counter()
            outs = setting(unit)
            tc += time.perf_counter() - t1
            tb += t1 - t0
            if r == 0:
                for out in outs:
                    stats = stats + out.stats
        ratios.append(tb / tc)
        secs.append(tc)
        base_secs.append(tb)
    return statistics.median(ratios), statistics.median(secs), statistics.median(base_secs), stats


_FULL = ExitConfig("none")


def machine_info() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "cuda": torch.cuda.is_available()}


def _batches(tagger: Tagger, docs: list, batch_size: int, limit: int | None) -> list:
    windows = tagger.featurizer.windows(docs[:limit] if limit else docs)
    return [collate([windows[i] for i in idx], tagger.featurizer.pad_id).to(tagger.device)
            for idx in length_sorted_batches(windows, batch_size)]


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    if cfg.repeats < 1:
        raise ConfigError("repeats", "must be at least 1")
    tagger = Tagger.from_pretrained(cfg.model)
    dataset = tagger.load(cfg.data, data_dir=cfg.data_dir)
    sentences = dataset.sentences[: cfg.limit] if cfg.limit else dataset.sentences
    docs = [s.tokens for s in sentences]
    gold = [s.tags for s in sentences]
    num_layers = tagger.num_layers

    settings: list[ExitConfig] = []
    for policy in cfg.policies:
        settings_of = REGISTRY[policy].settings if policy in REGISTRY else ()
        for kv in (cfg.kv if "kv" in settings_of else ["keep"]):
            for halted in (cfg.halted if "halted" in settings_of else ["rescore"]):
                settings += default_grid(policy, num_layers, kv, cfg.grid, halted)
    settings += cfg.extra
    calibration = None
    if cfg.target_speedup:
        from .calibrate import calibrate

        dev = cfg.calibration_data or (tagger.config.training or {}).get("dev")
        if not dev or dev == "None":
            raise ConfigError("calibration-data", "--target-speedup needs dev data (--calibration-data PATH)")
        calibration = calibrate(tagger, dev, cfg.target_speedup, save_to=cfg.model, data_dir=cfg.data_dir)
        settings.append(calibration.exit)

    # pre-built batches per batch size: timing covers the model only, not tokenisation or padding
    limits = {bs: (cfg.timing_limit_b1 if bs == 1 else cfg.timing_limit) for bs in cfg.batch_sizes}
    batches = {bs: _batches(tagger, docs, bs, limits[bs]) for bs in cfg.batch_sizes}
    others = [Tagger.from_pretrained(m) for m in cfg.compare_models]

    total = len(settings) * (1 + len(cfg.batch_sizes)) + (1 + len(cfg.batch_sizes)) * (1 + len(others))
    bar = tqdm(total=total, desc="bench", disable=not cfg.progress, file=sys.stderr)
    rows: list[dict[str, Any]] = []

    def score_of(t: Tagger, exit_cfg: ExitConfig) -> float:
        pred = t.predict_words(docs, exit_cfg, max(cfg.batch_sizes))
        bar.update(1)
        return task_scores(t.config.task, gold, pred.tags)["score"]

    full_score = score_of(tagger, _FULL)
    scores = {id(c): score_of(tagger, c) for c in settings}
    other_scores = [score_of(t, _FULL) for t in others]
    for bs in cfg.batch_sizes:
        size = 1 if bs == 1 else cfg.refill_unit
        units = [batches[bs][i:i + size] for i in range(0, len(batches[bs]), size)]
        refill = cfg.refill and bs > 1
        _, base_secs, _, base_stats = _paired(tagger, units, _FULL, cfg.repeats)
        bar.update(1)
        rows.append(_row("none", _FULL, bs, full_score, base_stats, 1.0, base_secs, base_secs))
        for exit_cfg in settings:
            wall, secs, base_secs, stats = _paired(tagger, units, exit_cfg, cfg.repeats, refill)
            bar.update(1)
            rows.append(_row(row_key(exit_cfg), exit_cfg, bs, scores[id(exit_cfg)], stats, wall, secs, base_secs))
        for path, other, score in zip(cfg.compare_models, others, other_scores):
            rows.append(_compare_row(tagger, other, path, docs, bs, limits[bs], score, cfg.repeats))
            bar.update(1)
    bar.close()

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": cfg.model, "label": cfg.label or Path(cfg.model).name, "data": str(dataset.path),
            "sentences": len(docs), "timing_sentences": {str(bs): limits[bs] or len(docs) for bs in cfg.batch_sizes},
            "repeats": cfg.repeats, "task": tagger.config.task, "num_layers": num_layers,
            "refill": cfg.refill, "refill_unit": cfg.refill_unit, "refill_tokens": tagger.engine.refill_tokens,
            "machine": machine_info(), "calibration": calibration.to_dict() if calibration else None,
            "compare_models": cfg.compare_models}
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    md = render_markdown(rows, meta)
    atomic_write_text(out / "results.md", md + "\n")
    plot(rows, meta, out / "results.png")
    return {"rows": rows, "meta": meta, "markdown": md}


def _compare_row(tagger: Tagger, other: Tagger, path: str, docs, bs: int, limit: int | None, score: float,
                 repeats: int) -> dict[str, Any]:
    """Another (smaller) model at full depth, timed in alternation with this model at full depth."""
    mine = _batches(tagger, docs, bs, limit)
    theirs = _batches(other, docs, bs, limit)
    ratios, secs, base_secs = [], [], []
    flops = flops_full = 0.0
    for r in range(repeats + 1):  # the first round warms up
        tb = tc = 0.0
        for a, b in zip(mine, theirs):
            t0 = time.perf_counter()
            out_a = tagger.engine.run(a, _FULL)
            t1 = time.perf_counter()
            out_b = other.engine.run(b, _FULL)
            tc += time.perf_counter() - t1
            tb += t1 - t0
            if r == 0:
                flops_full += out_a.stats.flops_full
                flops += out_b.stats.flops
        if r:
            ratios.append(tb / tc)
            secs.append(tc)
            base_secs.append(tb)
    label = other.config.encoder_name or Path(path).name
    wall = statistics.median(ratios)
    return {"policy": f"smaller model: {label}", "settings": {"model": str(path), "policy": "none"},
            "describe": f"{label}, {other.num_layers} layers, full depth", "batch_size": bs, "score": score,
            "flops_speedup": flops_full / flops, "wall_speedup": wall, "mean_exit_layer": float(other.num_layers),
            "wall_over_flops": wall / (flops_full / flops), "seconds": statistics.median(secs),
            "baseline_seconds": statistics.median(base_secs), "timed_sentences": len(docs[:limit] if limit else docs),
            "packed_layer_steps": 0, "dense_layer_steps": 0}


def _row(policy: str, exit_cfg: ExitConfig, bs: int, score: float, stats: ExitStats, wall: float, seconds: float,
         base_seconds: float) -> dict[str, Any]:
    return {
        "policy": policy, "settings": exit_cfg.to_dict(), "describe": exit_cfg.describe(), "batch_size": bs,
        "score": score, "flops_speedup": stats.flops_speedup, "wall_speedup": wall,
        "mean_exit_layer": stats.mean_exit_layer, "wall_over_flops": wall / stats.flops_speedup,
        "seconds": seconds, "baseline_seconds": base_seconds, "timed_sentences": stats.sentences,
        "packed_layer_steps": stats.packed_layers, "dense_layer_steps": stats.dense_layers,
    }


def nearest(rows: list[dict], policy: str, bs: int, target: float) -> dict | None:
    """The row of ``policy`` at batch size ``bs`` whose FLOPs speed-up is nearest ``target`` (within 15%)."""
    cands = [r for r in rows if r["policy"] == policy and r["batch_size"] == bs]
    if not cands:
        return None
    best = min(cands, key=lambda r: abs(r["flops_speedup"] - target))
    return best if abs(best["flops_speedup"] - target) <= 0.15 * target else None


def render_markdown(rows: list[dict], meta: dict) -> str:
    task_metric = "accuracy" if meta["task"] == "pos" else "F1"
    m = meta["machine"]
    timed = ", ".join(f"batch {bs}: {n}" for bs, n in meta["timing_sentences"].items())
    lines = [f"Model `{meta['label']}` ({meta['num_layers']} layers) on `{Path(meta['data']).name}` "
             f"({meta['sentences']} sentences scored; sentences timed: {timed}); "
             f"{m['processor']}, {m['cpus']} CPUs, {m['threads']} torch threads, torch {m['torch']}. "
             f"Wall-clock speed-up: full depth and the setting timed in alternation, unit by unit "
             f"(batch size 1: one sentence; larger: {meta.get('refill_unit', 1)} batches, "
             + ("the engine refilling thin layers across them" if meta.get("refill") else "no refill")
             + f"), median of {meta['repeats']} passes after a warm-up.", ""]
    policies = list(dict.fromkeys(r["policy"] for r in rows
                                  if r["policy"] != "none" and not r["policy"].startswith("smaller model")))
    full = next(r for r in rows if r["policy"] == "none")
    batch_sizes = sorted({r["batch_size"] for r in rows})
    lines.append(f"Full depth: {task_metric} {100 * full['score']:.2f}.")
    lines.append("")
    lines.append(f"**{task_metric} at a FLOPs speed-up of about 1.5x / 2x / 3x / 4x** (the setting of each policy "
                 "whose FLOPs speed-up is nearest the target; wall-clock speed-up at batch "
                 f"{batch_sizes[-1]} in brackets):")
    lines.append("")
    header = ["policy"] + [f"~{t:g}x" for t in TARGETS]
    table = []
    for policy in policies:
        cells = [policy]
        for target in TARGETS:
            r = nearest(rows, policy, batch_sizes[-1], target)
            cells.append("-" if r is None else
                         f"{100 * r['score']:.2f} ({r['flops_speedup']:.2f}x; wall {r['wall_speedup']:.2f}x)")
        table.append(cells)
    lines.append(markdown_table(header, table))
    for r in rows:
        if r["policy"].startswith("smaller model") and r["batch_size"] == batch_sizes[-1]:
            lines += ["", f"{r['describe']}: {task_metric} {100 * r['score']:.2f} at {r['flops_speedup']:.2f}x FLOPs "
                          f"(wall {r['wall_speedup']:.2f}x at batch {r['batch_size']})."]
    for bs in batch_sizes:
        lines += ["", f"**All settings, batch size {bs}:**", ""]
        table = [[r["policy"], r["describe"], f"{100 * r['score']:.2f}", f"{r['flops_speedup']:.2f}x",
                  f"{r['wall_speedup']:.2f}x", f"{r['wall_over_flops']:.2f}", f"{r['mean_exit_layer']:.2f}",
                  f"{r['seconds']:.2f}"]
                 for r in rows if r["batch_size"] == bs]
        lines.append(markdown_table(["policy", "setting", task_metric, "FLOPs speed-up", "wall speed-up",
                                     "wall/FLOPs", "mean exit layer", "seconds"], table))
    return "\n".join(lines)


def plot(rows: list[dict], meta: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional (pip install earlytag[bench])
        return
    batch_sizes = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    full = next(r for r in rows if r["policy"] == "none")
    for ax, (xkey, bs, title) in zip(axes, [("flops_speedup", batch_sizes[-1], "FLOPs speed-up"),
                                            ("wall_speedup", batch_sizes[-1], f"wall-clock speed-up (batch {batch_sizes[-1]})")]):
        for policy in dict.fromkeys(r["policy"] for r in rows if r["policy"] != "none"):
            pts = sorted((r[xkey], 100 * r["score"]) for r in rows if r["policy"] == policy and r["batch_size"] == bs)
            ax.plot([1.0] + [p[0] for p in pts], [100 * full["score"]] + [p[1] for p in pts], marker="o",
                    label=policy, linestyle="--" if policy == "static" else "-")
        ax.set_xlabel(title)
        ax.set_ylabel("accuracy" if meta["task"] == "pos" else "F1")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{meta['label']} on {Path(meta['data']).name}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
