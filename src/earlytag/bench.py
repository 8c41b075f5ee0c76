"""``earlytag bench``: sweep exit settings, measure score, FLOPs speed-up and wall-clock speed-up.

For every policy and batch size, the full-depth baseline and each setting are timed in the same process
over the same pre-built batches (tokenisation and padding excluded), after a warm-up, as the median of
``repeats`` passes. ``wall_speedup`` is baseline time / setting time; the baseline is re-measured before
each policy's sweep so slow drift of a noisy machine does not pile up. Scores come from one pass over
all sentences (they do not depend on the batch size; ``tests/test_engine.py`` checks that).

Writes ``results.json`` (a list of rows), ``results.md`` and ``results.png`` (score vs speed-up) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .allocator import keep_freed_memory, kept_freed_memory
from .api import Tagger
from .data.batching import collate, length_sorted_batches
from .defaults import HALTED_DEFAULT, ONEDNN_PRECISIONS, ONNX_PRECISIONS
from .engine import REGISTRY, ExitConfig, ExitStats
from .engine.policies import TARGETS, with_settings
from .errors import ConfigError
from .metrics import task_scores
from .model.precision import cpu_flags
from .peers import HFPipelinePeer, make_peer
from .report import layer_list, markdown_table
from .storage import atomic_write_text


def default_grid(policy: str, num_layers: int, kv: str = "keep", size: str = "default",
                 halted: str = HALTED_DEFAULT, thresholds: Sequence[float] | None = None, window: int | None = None,
                 min_layer: int | None = None) -> list[ExitConfig]:
    """The settings the bench sweeps for ``policy`` (each policy brings its own grid); ``thresholds`` replace
    the τ values of a threshold policy's grid, ``window`` and ``min_layer`` (None: the grid's) are set on every
    setting whose policy reads them."""
    rule = REGISTRY.get(policy)
    if rule is None:
        raise ConfigError("policies", f"unknown policy {policy!r}; expected one of {', '.join(REGISTRY)}")
    grid = rule.grid(num_layers, size, kv)
    if thresholds and "threshold" in rule.settings and grid:
        grid = [replace(grid[0], threshold=float(t)) for t in thresholds]
    return with_settings(grid, halted=halted, window=window, min_layer=min_layer)


def row_key(cfg: ExitConfig) -> str:
    """The name of a setting's curve in the results: the policy, -drop for kv=drop, -RULE for a halted rule other
    than the default (results written before the default became frozen name the frozen rule -frozen instead)."""
    rule = cfg.rule
    return (cfg.policy + ("-drop" if cfg.kv == "drop" and "kv" in rule.settings else "")
            + (f"-{cfg.halted}" if cfg.halted != HALTED_DEFAULT and "halted" in rule.settings else ""))


@dataclass
class BenchConfig:
    model: str
    data: str
    out: str
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    policies: list[str] = field(default_factory=lambda: ["static", "sentence", "token", "patience"])
    repeats: int = 3
    limit: int | None = None
    timing_limit: int | None = 1000  # batch sizes > 1 are timed on the first N sentences (None: all)
    timing_limit_b1: int | None = 200  # batch size 1 is timed on the first N sentences
    kv: list[str] = field(default_factory=lambda: ["keep"])
    halted: list[str] = field(default_factory=lambda: [HALTED_DEFAULT])  # token exit: rescore and/or frozen
    precisions: list[str] = field(default_factory=lambda: ["fp32"])  # every setting in each of these
    backends: list[str] = field(default_factory=lambda: ["torch"])  # torch | onnxruntime (fp32 and int8 only)
    compare: list[str] = field(default_factory=list)  # peers: hf-pipeline, ort-fp32, ort-int8
    timing: bool = True  # False: scores and FLOPs only
    noise_spread: float = 0.15  # a wall-clock figure whose passes spread more than this (max-min)/median is noisy
    data_dir: str | None = None
    progress: bool = True
    target_speedup: float | None = None
    calibration_data: str | None = None
    label: str | None = None
    extra: list[ExitConfig] = field(default_factory=list)  # settings to add to the sweep
    grid: str = "small"  # small | default | full (policies.BENCH_THRESHOLDS; full: every depth and patience)
    thresholds: list[float] | None = None  # τ values of the threshold policies instead of the grid's
    window: int | None = None  # token/patience: the window k of every setting (None: the grid's, k=2)
    min_layer: int | None = None  # token/sentence: a floor, nothing halts before this layer (None: none)
    compare_models: list[str] = field(default_factory=list)  # other models timed at full depth (smaller models)
    refill: bool = True  # batch sizes > 1: the engine refills thin layers across consecutive batches
    refill_unit: int = 8  # batches per timed unit (the engine refills within a unit)
    alternate: int = 1  # units per alternation block (1: unit by unit; more: each side runs warm, paired())
    device: str | None = None  # cpu (default), cuda, ...
    decoding: dict[str, Any] = field(default_factory=dict)  # a CRF model's decode, meanfield_iters, crf_uncertainty
    reference: str | None = None  # speed-ups against this model's fp32 full depth (e.g. the unpruned model)


@dataclass
class Timing:
    """One contender timed against the baseline, unit by unit in alternation, ``passes`` times."""

    ratios: list[float]  # baseline time / contender time, per pass
    seconds: float  # median contender seconds per pass
    baseline_seconds: float

    @property
    def speedup(self) -> float:
        return statistics.median(self.ratios)

    @property
    def spread(self) -> float:
        return (max(self.ratios) - min(self.ratios)) / self.speedup if len(self.ratios) > 1 else 0.0


def paired(base: Callable[[Any], Any], contender: Callable[[Any], Any], units: list, repeats: int,
           collect: Callable[[Any], None] | None = None, block: int = 1) -> Timing:
    """Time ``contender`` against ``base`` in alternation, ``repeats`` passes after a warm-up.

    A unit is one batch (batch size 1) or a few consecutive batches that the engine may refill across
    (``Engine.run_many``). Alternating makes both see the same machine state, so a noisy machine moves both alike.
    ``block`` units at a time: 1 (the default) alternates unit by unit, so each side starts every unit with the
    caches the other left; larger blocks let each side run warm through ``block`` units, as a server tagging a
    stream with one model does. ``collect`` receives the contender's output of every unit of the first pass."""
    if block < 1:
        raise ConfigError("alternate", "must be at least 1")
    blocks = [units[i:i + block] for i in range(0, len(units), block)]
    for unit in units[: max(1, len(units) // 20)]:  # warm-up
        base(unit)
        contender(unit)
    ratios, secs, base_secs = [], [], []
    for r in range(repeats):
        tb = tc = 0.0
        for group in blocks:
            t0 = time.perf_counter()
            for unit in group:
                base(unit)
            t1 = time.perf_counter()
            outs = [contender(unit) for unit in group]
            tc += time.perf_counter() - t1
            tb += t1 - t0
            if r == 0 and collect is not None:
                for out in outs:
                    collect(out)
        ratios.append(tb / tc)
        secs.append(tc)
        base_secs.append(tb)
    return Timing(ratios, statistics.median(secs), statistics.median(base_secs))


_FULL = ExitConfig("none")


def machine_info() -> dict[str, Any]:
    import os

    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    # what the low-precision figures depend on: torch's kernel level and the CPU's int8/bf16 matrix instructions
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["cpu_matrix_flags"] = sorted(cpu_flags() & {"avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                                     "avx512_fp16", "amx_int8", "amx_bf16", "amx_fp16"})
    # the C allocator keeping freed memory (earlytag.allocator; the CLI sets it): MiB kept, or None
    info["keep_freed_memory_mb"] = kept_freed_memory()
    try:
        with open("/proc/loadavg") as f:
            info["load_average"] = [float(x) for x in f.read().split()[:3]]  # the machine's load when it ran
    except OSError:
        pass
    return info


def one_thread_machine() -> str:
    """How a one-thread measurement script's figures were made, for the line under its table: the CPU, torch, the
    load at the end, and that freed memory was kept (the script calls ``keep_freed_memory`` as every verb does)."""
    m = machine_info()
    return (f"1 thread, {m['cpus']} CPUs ({m['cpu_capability']}: {', '.join(m['cpu_matrix_flags'])}), torch "
            f"{torch.__version__}, load average {m.get('load_average', ['?'])[0]} at the end, freed memory kept.")


def ab_parser(description: str, precisions: list[str] | None = None) -> argparse.ArgumentParser:
    """The options every engine A/B script shares (``scripts/*_ab.py``, ``scripts/step_costs.py``): the model,
    ``--data``, ``--threshold`` (token exit τ, window 2), ``--sentences``, ``--passes``, ``--out``, and
    ``--precisions`` where a default is given. A script adds its own, then calls :func:`ab_start`."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("model")
    ap.add_argument("--data", default="uner-en-ewt:test")
    if precisions is not None:
        ap.add_argument("--precisions", nargs="+", default=precisions)
    ap.add_argument("--threshold", type=float, default=0.1, help="token exit τ (window 2)")
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--out", required=True)
    return ap


def ab_start(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed options, with torch on one thread and freed memory kept (as every earlytag verb runs)."""
    args = ap.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    return args


def ab_workload(tagger: Tagger, args: argparse.Namespace) -> tuple[list, list[list], dict[str, ExitConfig]]:
    """The first ``args.sentences`` of ``args.data`` (their words), the same as pre-built batches of 32 in units of
    8 batches (one ``run_many`` each, as ``earlytag bench`` times them), and the two settings an A/B times: full
    depth and token exit at ``args.threshold``."""
    docs = [s.tokens for s in tagger.load(args.data).sentences[: args.sentences]]
    batches, _ = prebuilt_batches(tagger, docs, 32)
    cfgs = {"full depth": ExitConfig(),
            f"token τ={args.threshold:g}": tagger.exit_config({"policy": "token", "threshold": args.threshold})}
    return docs, [batches[i:i + 8] for i in range(0, len(batches), 8)], cfgs


def ab_finish(args: argparse.Namespace, lines: list[str], workload: bool = True, passes: bool = True) -> None:
    """The line under an A/B script's tables — its command, the workload (sentences, data, batch size; the passes)
    and :func:`one_thread_machine` — then ``args.out`` written whole and the tables printed."""
    note = f"python scripts/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]) + "; "
    if workload:
        note += f"{args.sentences} sentences of {args.data}, batch 32, "
        note += f"median of {args.passes} alternating passes, " if passes else ""
    text = "\n".join([*lines, "", note + one_thread_machine()])
    atomic_write_text(Path(args.out), text + "\n")
    print(text)


def engine_variants_ab(engine, units: list[list], cfgs: dict[str, ExitConfig], variants: dict[str, Callable[[], Any]],
                       passes: int, warm: list) -> tuple[dict, dict]:
    """Engine variants timed inside the engine: each ``variants`` entry sets the engine up (an attribute, a function
    it calls; or returns another engine to time, e.g. of the same model loaded another way), then every setting of
    ``cfgs`` runs over the same ``units`` (lists of batches, one ``run_many`` each), in alternating passes, each
    after a warm-up call on ``warm`` -> the median seconds and the labels of the real words (of the last pass) per
    ``(variant, setting)``."""
    times: dict = {(v, c): [] for v in variants for c in cfgs}
    labels = {}
    batches = [b for unit in units for b in unit]
    for _ in range(passes):
        for v, setup in variants.items():
            engine_v = setup() or engine
            for c, cfg in cfgs.items():
                engine_v.run_many(warm, cfg)
                start = time.perf_counter()
                outs = [out for unit in units for out in engine_v.run_many(unit, cfg)]
                times[(v, c)].append(time.perf_counter() - start)
                labels[(v, c)] = torch.cat([o.pred[b.word_mask.bool()] for o, b in zip(outs, batches)])
    return {k: statistics.median(t) for k, t in times.items()}, labels


def variants_ab_rows(precision: str, medians: dict, labels: dict, base: str, ratio_digits: int = 2) -> list[str]:
    """Table rows of :func:`engine_variants_ab`'s results, per setting then variant: the median seconds, the
    baseline variant's time over this one's, the setting's full depth (the first setting) over it, and the share of
    words labelled as with the baseline variant."""
    variants = list(dict.fromkeys(v for v, _ in medians))
    cfgs = list(dict.fromkeys(c for _, c in medians))
    rows = []
    for c in cfgs:
        for v in variants:
            med = medians[(v, c)]
            same = float((labels[(v, c)] == labels[(base, c)]).float().mean())
            rows.append(f"| {precision} | {c} | {v} | {med:.3f} | {medians[(base, c)] / med:.{ratio_digits}f}x "
                        f"| {medians[(v, cfgs[0])] / med:.2f}x | {100 * same:.2f}% |")
    return rows


def prebuilt_batches(tagger: Tagger, docs: list, batch_size: int, limit: int | None = None) -> tuple[list, list[list]]:
    """Pre-built batches (on the tagger's device) and the word lists of each batch."""
    docs = docs[:limit] if limit else docs
    windows = tagger.featurizer.windows(docs)
    order = list(length_sorted_batches(windows, batch_size))
    batches = [collate([windows[i] for i in idx], tagger.featurizer.pad_id).to(tagger.device) for idx in order]
    words = [[list(docs[windows[i].doc][windows[i].start:windows[i].start + windows[i].num_words]) for i in idx]
             for idx in order]
    return batches, words


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    if cfg.repeats < 1:
        raise ConfigError("repeats", "must be at least 1")
    base = Tagger.from_pretrained(cfg.model, device=cfg.device, **cfg.decoding)  # fp32: the reference of every wall-clock speed-up
    runtimes = [(p, b) for b in cfg.backends for p in cfg.precisions
                if b == "torch" or (b == "onednn" and p in ONEDNN_PRECISIONS) or (b == "onnxruntime" and p in ONNX_PRECISIONS)]
    taggers = {(p, b): base if (p, b) == ("fp32", "torch") else
               Tagger.from_pretrained(cfg.model, precision=p, backend=b, device=cfg.device, **cfg.decoding)
               for p, b in runtimes}
    ref = None
    if cfg.reference:  # e.g. a slim model against the model it was cut from
        ref = Tagger.from_pretrained(cfg.reference, device=cfg.device)
        if ref.tokenizer.get_vocab() != base.tokenizer.get_vocab() or ref.labels != base.labels:
            raise ConfigError("reference", f"{cfg.reference} must share {cfg.model}'s tokenizer and labels")
    dataset = base.load(cfg.data, data_dir=cfg.data_dir)
    sentences = dataset.sentences[: cfg.limit] if cfg.limit else dataset.sentences
    docs = [s.tokens for s in sentences]
    gold = [s.tags for s in sentences]
    num_layers = base.num_layers

    settings: list[ExitConfig] = []
    for policy in cfg.policies:
        settings_of = REGISTRY[policy].settings if policy in REGISTRY else ()
        for kv in (cfg.kv if "kv" in settings_of else ["keep"]):
            for halted in (cfg.halted if "halted" in settings_of else ["rescore"]):
                settings += default_grid(policy, num_layers, kv, cfg.grid, halted, cfg.thresholds, cfg.window,
                                         cfg.min_layer)
    settings += cfg.extra
    calibration = None
    if cfg.target_speedup:
        from .calibrate import calibrate

        dev = cfg.calibration_data or (base.config.training or {}).get("dev")
        if not dev or dev == "None":
            raise ConfigError("calibration-data", "--target-speedup needs dev data (--calibration-data PATH)")
        calibration = calibrate(base, dev, cfg.target_speedup, data_dir=cfg.data_dir)  # in memory only
        settings.append(calibration.exit)
    contenders = [(r, c) for r in runtimes for c in [_FULL] + settings]
    if ("fp32", "torch") not in runtimes:  # the reference of every wall-clock figure has its row in any case
        taggers["fp32", "torch"] = base
        contenders.insert(0, (("fp32", "torch"), _FULL))

    # pre-built batches per batch size: timing covers the model only, not tokenisation or padding
    limits = {bs: (cfg.timing_limit_b1 if bs == 1 else cfg.timing_limit) for bs in cfg.batch_sizes}
    batches = {bs: prebuilt_batches(base, docs, bs, limits[bs]) for bs in cfg.batch_sizes} if cfg.timing else {}
    others = [Tagger.from_pretrained(m, device=cfg.device) for m in cfg.compare_models]
    peers = [make_peer(name, base) for name in cfg.compare]

    steps = len(contenders) + len(others) + len(peers)
    total = steps * (1 + (len(cfg.batch_sizes) if cfg.timing else 0))
    bar = tqdm(total=total, desc="bench", disable=not cfg.progress, file=sys.stderr)
    rows: list[dict[str, Any]] = []

    scores: dict[tuple[str, int], tuple[float, ExitStats]] = {}
    for runtime, exit_cfg in contenders:
        if exit_cfg.kv != "keep" and runtime[1] == "onnxruntime":
            continue
        pred = taggers[runtime].predict_words(docs, exit_cfg, max(cfg.batch_sizes))
        scores[runtime, id(exit_cfg)] = (task_scores(base.config.task, gold, pred.tags)["score"], pred.stats)
        bar.update(1)
    contenders = [(r, c) for r, c in contenders if (r, id(c)) in scores]
    other_scores = []
    for t in others:
        other_scores.append(task_scores(t.config.task, gold, t.predict_words(docs, _FULL).tags)["score"])
        bar.update(1)
    full_tags = base.predict_words(docs, _FULL, max(cfg.batch_sizes)).tags
    peer_scores = []
    for peer in peers:
        tags = peer.predict_tags(docs, max(cfg.batch_sizes))
        agree = _agreement(tags, full_tags)
        if agree < 0.99:
            raise ConfigError("compare", f"{peer.name} agrees with earlytag at full depth on only {100 * agree:.2f}% "
                                         "of the words (< 99%): it would not be the same model")
        peer_scores.append((task_scores(base.config.task, gold, tags)["score"], agree))
        bar.update(1)

    if not cfg.timing:
        for runtime, exit_cfg in contenders:
            score, stats = scores[runtime, id(exit_cfg)]
            rows.append(_row(exit_cfg, runtime, None, score, stats, None, None))
    for bs in (cfg.batch_sizes if cfg.timing else []):
        size = 1 if bs == 1 else cfg.refill_unit
        bs_batches, bs_words = batches[bs]
        units = [bs_batches[i:i + size] for i in range(0, len(bs_batches), size)]
        unit_words = [[w for ws in bs_words[i:i + size] for w in ws] for i in range(0, len(bs_batches), size)]

        def base_fn(unit, baseline=ref or base):
            for b in unit:
                baseline.engine.run(b, _FULL)

        precision_full: dict[tuple[str, str], float] = {}
        for runtime, exit_cfg in contenders:
            tagger = taggers[runtime]
            if runtime == ("fp32", "torch") and exit_cfg is _FULL and ref is None:
                timing = None  # the baseline itself
            else:
                refill = cfg.refill and bs > 1 and exit_cfg.rule.refill

                def contender(unit, tagger=tagger, exit_cfg=exit_cfg, refill=refill):
                    if refill:
                        return tagger.engine.run_many(unit, exit_cfg)
                    return [tagger.engine.run(b, exit_cfg) for b in unit]

                stats = ExitStats(num_layers)

                def collect(outs):
                    nonlocal stats
                    for o in outs:
                        stats = stats + o.stats

                timing = paired(base_fn, contender, units, cfg.repeats, collect, cfg.alternate)
            if exit_cfg is _FULL:
                precision_full[runtime] = timing.speedup if timing else 1.0
            score, whole = scores[runtime, id(exit_cfg)]
            rows.append(_row(exit_cfg, runtime, bs, score, whole, timing, precision_full.get(runtime),
                             cfg.noise_spread, stats if timing else whole))
            bar.update(1)
        for path, other, score in zip(cfg.compare_models, others, other_scores):
            rows.append(_compare_row(base, other, path, docs, bs, limits[bs], score, cfg.repeats, cfg.noise_spread))
            bar.update(1)
        for peer, (score, agree) in zip(peers, peer_scores):
            if isinstance(peer, HFPipelinePeer):  # it takes raw texts: the words of the same units
                run = peer.unit_runner(unit_words.__getitem__, bs)
                timing = paired(lambda i, units=units: base_fn(units[i]), run, list(range(len(units))), cfg.repeats,
                                block=cfg.alternate)
            else:
                timing = paired(base_fn, peer.unit_runner(), units, cfg.repeats, block=cfg.alternate)
            rows.append(_peer_row(peer.name, bs, score, agree, timing, sum(len(w) for w in unit_words),
                                  cfg.noise_spread))
            bar.update(1)
    bar.close()
    if ref is not None:
        # this model's full depth over every sentence (FLOPs do not depend on the precision or backend)
        own_full = next(stats.flops_full for (_, key), (_, stats) in scores.items() if key == id(_FULL))
        _against_reference(rows, ref, base, own_full, docs, gold, batches, cfg)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": cfg.model, "label": cfg.label or Path(cfg.model).name, "data": str(dataset.path),
            "sentences": len(docs), "timing_sentences": {str(bs): limits[bs] or len(docs) for bs in cfg.batch_sizes},
            "repeats": cfg.repeats, "task": base.config.task, "num_layers": num_layers,
            "refill": cfg.refill, "refill_unit": cfg.refill_unit, "alternate": cfg.alternate, "refill_tokens": base.engine.refill_tokens,
            "machine": machine_info(), "calibration": calibration.to_dict() if calibration else None,
            "compare_models": cfg.compare_models, "head": base.decoding, "reference": cfg.reference, "precisions": cfg.precisions, "backends": cfg.backends,
            "compare": cfg.compare,
            # what int8-mixed kept float32 (earlytag quantize's choice per backend; none: every layer's FFN output)
            "int8_mixed": _int8_mixed_layers(base, cfg.backends) if "int8-mixed" in cfg.precisions else None,
            "timing": cfg.timing, "noise_spread": cfg.noise_spread}
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    md = render_markdown(rows, meta)
    atomic_write_text(out / "results.md", md + "\n")
    plot(rows, meta, out / "results.png")
    return {"rows": rows, "meta": meta, "markdown": md}


def _agreement(a: list[list[str]], b: list[list[str]]) -> float:
    pairs = [(x, y) for s, t in zip(a, b) for x, y in zip(s, t)]
    return sum(x == y for x, y in pairs) / max(len(pairs), 1)


def _timing_fields(timing: Timing | None, noise_spread: float) -> dict[str, Any]:
    if timing is None:
        return {"wall_speedup": 1.0, "passes": [1.0], "noisy": False}
    return {"wall_speedup": timing.speedup, "passes": [round(r, 4) for r in timing.ratios],
            "noisy": None if len(timing.ratios) < 2 else timing.spread > noise_spread,
            "seconds": timing.seconds, "baseline_seconds": timing.baseline_seconds}


def _against_reference(rows: list[dict], ref: Tagger, base: Tagger, own_full: float, docs, gold, batches,
                       cfg: BenchConfig) -> None:
    """Make the FLOPs speed-ups of ``rows`` (each against the benched model's own full depth, ``own_full`` FLOPs
    over every sentence) speed-ups against ``ref``'s full depth, and add the reference's own row. Wall-clock
    speed-ups were timed against ``ref``."""
    def full(tagger: Tagger, bs_batches) -> float:
        return sum(tagger.engine.run(b, _FULL).stats.flops_full for b in bs_batches)

    theirs = ref.predict_words(docs, _FULL)
    scale = theirs.stats.flops_full / own_full
    timed = {bs: full(ref, b) / full(base, b) for bs, (b, _) in batches.items()}  # the sentences timed
    for row in rows:
        if row.get("peer") or str(row["policy"]).startswith("smaller model"):
            continue
        row["flops_speedup_own"] = row["flops_speedup"]
        row["flops_speedup"] *= scale
        if row.get("timed_flops_speedup") is not None:
            row["timed_flops_speedup"] *= timed[row["batch_size"]]
    score = task_scores(ref.config.task, gold, theirs.tags)["score"]
    for bs in (cfg.batch_sizes if cfg.timing else [None]):
        rows.append({"policy": "reference", "precision": "fp32", "backend": "torch",
                     "settings": {"model": cfg.reference, "policy": "none"},
                     "describe": f"{Path(cfg.reference).name}, full depth (the reference)", "batch_size": bs,
                     "score": score, "flops_speedup": 1.0, "mean_exit_layer": float(ref.num_layers),
                     "wall_speedup": None if bs is None else 1.0, "wall_over_flops": None if bs is None else 1.0,
                     "timed_sentences": len(docs), "packed_layer_steps": 0, "dense_layer_steps": 0})


def _compare_row(tagger: Tagger, other: Tagger, path: str, docs, bs: int, limit: int | None, score: float,
                 repeats: int, noise_spread: float) -> dict[str, Any]:
    """Another (smaller) model at full depth, timed in alternation with this model at full depth."""
    mine, _ = prebuilt_batches(tagger, docs, bs, limit)
    theirs, _ = prebuilt_batches(other, docs, bs, limit)
    flops_full = sum(tagger.engine.run(a, _FULL).stats.flops_full for a in mine)  # this model at full depth
    flops = [0.0]

    def collect(out):
        flops[0] += out.stats.flops

    pairs = list(zip(mine, theirs))
    timing = paired(lambda p: tagger.engine.run(p[0], _FULL), lambda p: other.engine.run(p[1], _FULL), pairs,
                    repeats, collect)
    label = other.config.encoder_name or Path(path).name
    speed = flops_full / flops[0]
    return {"policy": f"smaller model: {label}", "precision": "fp32", "settings": {"model": str(path), "policy": "none"},
            "describe": f"{label}, {other.num_layers} layers, full depth", "batch_size": bs, "score": score,
            "flops_speedup": speed, "mean_exit_layer": float(other.num_layers),
            **_timing_fields(timing, noise_spread), "wall_over_flops": timing.speedup / speed,
            "timed_sentences": len(docs[:limit] if limit else docs), "packed_layer_steps": 0, "dense_layer_steps": 0}


def _peer_row(name: str, bs: int, score: float, agreement: float, timing: Timing, sentences: int,
              noise_spread: float) -> dict[str, Any]:
    return {"policy": name, "precision": "int8" if name.endswith("int8") else "fp32", "peer": True,
            "settings": {"peer": name, "policy": "none"}, "describe": f"{name}, full depth", "batch_size": bs,
            "score": score, "agreement_with_full_depth": agreement, "flops_speedup": 1.0,
            **_timing_fields(timing, noise_spread), "wall_speedup_same_precision": None,
            "mean_exit_layer": None, "wall_over_flops": None, "timed_sentences": sentences}


def _row(exit_cfg: ExitConfig, runtime: tuple[str, str], bs: int | None, score: float, stats: ExitStats,
         timing: Timing | None, precision_full: float | None, noise_spread: float = 0.15,
         timed: ExitStats | None = None) -> dict[str, Any]:
    """One setting in one precision and backend; ``wall_speedup`` against fp32 torch full depth,
    ``wall_speedup_same_precision`` against the same precision and backend's full depth (both measured against the
    same baseline in this run). ``score`` and ``flops_speedup`` are those of every sentence scored (``stats``, the
    numbers ``evaluate`` gives); ``timed_flops_speedup`` is that of the sentences timed (``timed``), and the
    wall/FLOPs ratio compares the timing with it."""
    precision, backend = runtime
    key = row_key(exit_cfg) + ("" if precision == "fp32" else f"@{precision}") + {"torch": "", "onednn": "/onednn"}.get(backend, "/ort")
    row = {"policy": key, "precision": precision, "backend": backend, "settings": exit_cfg.to_dict(),
           "describe": exit_cfg.describe(),
           "batch_size": bs, "score": score, "flops_speedup": stats.flops_speedup,
           "mean_exit_layer": stats.mean_exit_layer, "timed_sentences": stats.sentences,
           "packed_layer_steps": stats.packed_layers, "dense_layer_steps": stats.dense_layers}
    if bs is None:  # scores and FLOPs only
        return {**row, "wall_speedup": None, "wall_speedup_same_precision": None, "wall_over_flops": None}
    timed = timed or stats
    row.update(_timing_fields(timing, noise_spread))
    same = row["wall_speedup"] / precision_full if precision_full else None
    row["wall_speedup_same_precision"] = same
    row["timed_flops_speedup"] = timed.flops_speedup
    row["timed_sentences"] = timed.sentences
    row["wall_over_flops"] = (same or row["wall_speedup"]) / timed.flops_speedup
    return row


def nearest(rows: list[dict], policy: str, bs: int | None, target: float) -> dict | None:
    """The row of ``policy`` at batch size ``bs`` whose FLOPs speed-up is nearest ``target`` (within 15%)."""
    cands = [r for r in rows if r["policy"] == policy and r["batch_size"] == bs]
    if not cands:
        return None
    best = min(cands, key=lambda r: abs(r["flops_speedup"] - target))
    return best if abs(best["flops_speedup"] - target) <= 0.15 * target else None


def _wall(r: dict) -> str:
    """A wall-clock figure as the tables show it: ``~`` marks one whose passes disagree (noisy)."""
    if r.get("wall_speedup") is None:
        return "-"
    return ("~" if r.get("noisy") else "") + f"{r['wall_speedup']:.2f}x"


def _int8_mixed_layers(tagger, backends: list[str]) -> dict[str, list[int]]:
    """Per backend, the layers (from 0) whose FFN output ``--precision int8-mixed`` keeps float32 in this run."""
    from .model.precision import INT8_ROLES, quantized_roles

    return {backend: [i for i, roles in enumerate(quantized_roles(tagger.model, "int8-mixed", backend))
                      if roles == INT8_ROLES["int8-mixed"]] for backend in backends}


def render_markdown(rows: list[dict], meta: dict) -> str:
    task_metric = "accuracy" if meta["task"] == "pos" else "F1"
    m = meta["machine"]
    timed = ", ".join(f"batch {bs}: {n}" for bs, n in meta["timing_sentences"].items())
    load = m.get("load_average")
    where = (f"{m['processor']}, {m['cpus']} CPUs, {m['threads']} torch threads, torch {m['torch']}"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + (f", load average {load[0]:.2f} at the start" if load else "")
             + (f", freed memory kept (up to {m['keep_freed_memory_mb']} MiB)" if m.get("keep_freed_memory_mb") else ""))
    timing = meta.get("timing", True)
    lines = [f"Model `{meta['label']}` ({meta['num_layers']} layers) on `{Path(meta['data']).name}` "
             f"({meta['sentences']} sentences scored" + (f"; sentences timed: {timed}" if timing else "; not timed")
             + f"); {where}."]
    if meta.get("int8_mixed"):
        kept = "; ".join(f"{backend}: {layer_list(layers)}" for backend, layers in meta["int8_mixed"].items())
        lines.append(f"int8-mixed keeps the FFN output projection float32 in ({kept}; counted from 0), the rest int8.")
    if timing:
        lines.append(
            "Wall-clock speed-up: earlytag at full depth in float32 and the contender timed in alternation, "
            + ("unit by unit" if meta.get("alternate", 1) == 1 else
               f"{meta['alternate']} units at a time (each side running warm through them)")
            + f" (a unit at batch size 1: one sentence; larger: {meta.get('refill_unit', 1)} batches, "
            + ("the engine refilling thin layers across them" if meta.get("refill") else "no refill")
            + f"), median of {meta['repeats']} passes after a warm-up"
            + (f"; ~ marks a figure whose passes spread by more than {100 * meta.get('noise_spread', 0.15):.0f}% "
               "(a noisy machine: read it with care)" if meta["repeats"] > 1 else
               "; one pass: how noisy the figures are was not measured")
            + ". A precision's `wall/FLOPs` is against its own full depth.")
    lines.append("")
    series = list(dict.fromkeys(r["policy"] for r in rows if r["settings"].get("policy") != "none"
                                and not r["policy"].startswith("smaller model") and not r.get("peer")))
    full = next(r for r in rows if r["policy"] == "none")
    batch_sizes = sorted({r["batch_size"] for r in rows}, key=lambda b: (b is None, b))
    top = batch_sizes[-1] if timing else None
    lines.append(f"Full depth (fp32): {task_metric} {100 * full['score']:.2f}.")
    lines.append("")
    lines.append(f"**{task_metric} at a FLOPs speed-up of about 1.5x / 2x / 3x / 4x** (the setting of each policy "
                 "whose FLOPs speed-up is nearest the target"
                 + (f"; wall-clock speed-up at batch {top} in brackets" if timing else "") + "):")
    lines.append("")
    header = ["policy"] + [f"~{t:g}x" for t in TARGETS]
    table = []
    for policy in series:
        cells = [policy]
        for target in TARGETS:
            r = nearest(rows, policy, top, target)
            cells.append("-" if r is None else f"{100 * r['score']:.2f} ({r['flops_speedup']:.2f}x"
                         + (f"; wall {_wall(r)}" if timing else "") + ")")
        table.append(cells)
    lines.append(markdown_table(header, table))
    for r in rows:
        if r["policy"].startswith("none@") or r["policy"] == "none/ort":
            if r["batch_size"] == top:
                lines += ["", f"Full depth in {r['precision']} ({r.get('backend', 'torch')}): {task_metric} "
                              f"{100 * r['score']:.2f} (wall {_wall(r)} at batch {r['batch_size']})."]
        if (r["policy"].startswith("smaller model") or r.get("peer")) and r["batch_size"] == top:
            lines += ["", f"{r['describe']}: {task_metric} {100 * r['score']:.2f} at {r['flops_speedup']:.2f}x FLOPs "
                          f"(wall {_wall(r)} at batch {r['batch_size']})."]
    for bs in batch_sizes:
        lines += ["", f"**All settings{'' if bs is None else f', batch size {bs}'}:**", ""]
        header = ["policy", "precision", "setting", task_metric, "FLOPs speed-up"]
        if timing:
            header += ["wall speed-up vs fp32", "vs own full depth", "wall/FLOPs", "passes"]
        header += ["mean exit layer"]
        table = []
        for r in rows:
            if r["batch_size"] != bs:
                continue
            cells = [r["policy"], r.get("precision", "fp32") + ("" if r.get("backend", "torch") == "torch" else
                                                                 f" {r['backend']}"), r["describe"],
                     f"{100 * r['score']:.2f}",
                     f"{r['flops_speedup']:.2f}x"]
            if timing:
                same = r.get("wall_speedup_same_precision")
                cells += [_wall(r), "-" if same is None else f"{same:.2f}x",
                          "-" if r.get("wall_over_flops") is None else f"{r['wall_over_flops']:.2f}",
                          " ".join(f"{x:.2f}" for x in r.get("passes", []))]
            cells.append("-" if r.get("mean_exit_layer") is None else f"{r['mean_exit_layer']:.2f}")
            table.append(cells)
        lines.append(markdown_table(header, table))
    return "\n".join(lines)


def plot(rows: list[dict], meta: dict, path: Path) -> None:
    """Score against FLOPs speed-up and against wall-clock speed-up at the largest batch size: one curve per policy
    and precision, peers and smaller models as single points; hollow markers for noisy figures."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional (pip install earlytag[bench])
        return
    timing = meta.get("timing", True)
    batch_sizes = sorted({r["batch_size"] for r in rows}, key=lambda b: (b is None, b))
    bs = batch_sizes[-1] if timing else None
    panels = [("flops_speedup", "FLOPs speed-up")] + ([("wall_speedup", f"wall-clock speed-up vs fp32 full depth "
                                                        f"(batch {bs})")] if timing else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    full = next(r for r in rows if r["policy"] == "none")
    for ax, (xkey, title) in zip(axes[0], panels):
        for policy in dict.fromkeys(r["policy"] for r in rows if r["policy"] != "none"):
            pts = sorted((r[xkey], 100 * r["score"], bool(r.get("noisy"))) for r in rows
                         if r["policy"] == policy and r["batch_size"] == bs and r[xkey] is not None)
            if not pts:
                continue
            single = policy.startswith("smaller model") or any(r.get("peer") for r in rows if r["policy"] == policy)
            if single:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="s", s=60, label=policy, zorder=3)
                continue
            origin = [] if "@" in policy else [(1.0, 100 * full["score"], False)]
            pts = origin + pts
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=policy,
                           linestyle="--" if policy.startswith("static") else "-")[0]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=line.get_color(),
                       facecolors=["none" if p[2] else line.get_color() for p in pts], zorder=3)
        ax.set_xlabel(title)
        ax.set_ylabel("accuracy" if meta["task"] == "pos" else "F1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{meta['label']} on {Path(meta['data']).name}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
