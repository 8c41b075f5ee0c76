"""earlytag bench on a tiny model: rows of the documented shape, markdown, plot; no timing assertions."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from earlytag import Tagger
from earlytag.cli import main

from .conftest import tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("bench")
    labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
    Tagger(tiny_model("bert", labels=labels), tokenizer).save_pretrained(root / "big")
    small = tiny_model("bert", labels=labels)
    Tagger(small, tokenizer).save_pretrained(root / "small")
    return root


def test_bench_writes_results(models, tmp_path, capsys, shared_data, monkeypatch):
    monkeypatch.delenv("EARLYTAG_KEEP_FREED_MEMORY", raising=False)  # the CLI's default: freed memory kept
    out = tmp_path / "bench"
    code = main(["bench", str(models / "big"), "uner-en-ewt:dev", "--out", str(out), "--limit", "40",
                 "--timing-limit-b1", "10", "--repeats", "1", "--grid", "small", "--kv-modes", "keep", "drop",
                 "--compare-model", str(models / "small"), "--quiet"])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())
    for row in rows:
        assert {"policy", "settings", "batch_size", "score", "flops_speedup", "wall_speedup",
                "mean_exit_layer"} <= set(row)
    policies = {r["policy"] for r in rows}
    assert {"none", "static", "sentence", "token", "patience", "token-drop", "sentence-drop"} <= policies
    assert any(p.startswith("smaller model") for p in policies)
    assert {r["batch_size"] for r in rows} == {1, 32}
    full = [r for r in rows if r["policy"] == "none"]
    assert all(r["wall_speedup"] == 1.0 and r["flops_speedup"] == pytest.approx(1.0) for r in full)
    static1 = next(r for r in rows if r["policy"] == "static" and r["settings"]["layer"] == 1)
    assert static1["flops_speedup"] > 2.5  # 1 of 3 layers
    # scores do not depend on the batch size
    by_setting = {}
    for r in rows:
        by_setting.setdefault(json.dumps(r["settings"], sort_keys=True), set()).add(r["score"])
    assert all(len(v) == 1 for v in by_setting.values())
    assert (out / "results.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "All settings, batch size 1" in md and "~2x" in md
    meta = json.loads((out / "meta.json").read_text())
    assert meta["machine"]["keep_freed_memory_mb"] == 1024 and "freed memory kept (up to 1024 MiB)" in md
    assert "| token |" in capsys.readouterr().out


def test_small_grid_keeps_the_static_depths_nearest_the_targets():
    from earlytag.bench import default_grid

    assert [c.layer for c in default_grid("static", 12, size="small")] == [3, 4, 6, 8]
    assert [c.layer for c in default_grid("static", 6, size="small")] == [2, 3, 4]
    assert [c.layer for c in default_grid("static", 6, size="full")] == [1, 2, 3, 4, 5]


def test_thresholds_replace_the_grid_of_threshold_policies(capsys):
    from earlytag.bench import default_grid
    from earlytag.cli import build_parser

    token = default_grid("token", 12, kv="drop", halted="frozen", thresholds=[0.5, 0.8])
    assert [(c.threshold, c.window, c.kv, c.halted) for c in token] == [(0.5, 2, "drop", "frozen"),
                                                                        (0.8, 2, "drop", "frozen")]
    assert [c.threshold for c in default_grid("sentence", 12, thresholds=[0.6])] == [0.6]
    assert [c.layer for c in default_grid("static", 12, thresholds=[0.6])] == [3, 4, 6, 8]  # no τ: unchanged
    args = build_parser().parse_args(["bench", "m", "d", "--out", "o", "--thresholds", "0.5", "0.9"])
    assert args.thresholds == [0.5, 0.9]


def test_bench_stacks_precisions_backends_and_peers(models, tmp_path, monkeypatch, shared_data):
    """--precisions/--backends/--compare: one row per setting, precision and backend with both wall speed-ups, the
    fp32 torch full depth (every wall figure's reference) present even when torch is not among the backends, and the
    peers' rows with their scores and word agreement."""
    from .conftest import need_module

    need_module("onnxruntime")
    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "stacked"
    assert main(["bench", str(models / "big"), "uner-en-ewt:dev", "--out", str(out), "--limit", "30",
                 "--batch-sizes", "1", "--timing-limit-b1", "4", "--repeats", "1", "--policies", "token",
                 "--grid", "small", "--precisions", "fp32", "int8-mixed", "--backends", "onnxruntime",
                 "--compare", "ort-fp32", "--quiet"]) == 0
    rows = json.loads((out / "results.json").read_text())
    by_key = {(r["policy"], r["describe"]): r for r in rows}
    reference = by_key["none", "none"]
    assert (reference["precision"], reference["backend"], reference["wall_speedup"]) == ("fp32", "torch", 1.0)
    own = [r for r in rows if not r.get("peer") and r is not reference]
    assert {(r["precision"], r["backend"]) for r in own} == {("fp32", "onnxruntime"), ("int8-mixed", "onnxruntime")}
    assert len(own) == 2 * 7  # full depth and the small grid's six thresholds, per precision
    for r in own:
        assert r["wall_speedup"] > 0 and r["wall_speedup_same_precision"] > 0
        assert r["policy"].endswith("/ort") and ("@int8-mixed" in r["policy"]) == (r["precision"] == "int8-mixed")
    assert by_key["none/ort", "none"]["score"] == reference["score"]  # the same fp32 model
    peer = next(r for r in rows if r.get("peer"))
    assert peer["policy"] == "ort-fp32" and peer["score"] == reference["score"] and peer["agreement_with_full_depth"] >= 0.99
    assert "none@int8-mixed/ort" in (out / "results.md").read_text()
    # no choice stored in the model: int8-mixed kept every layer's FFN output float32, and the results say so
    meta = json.loads((out / "meta.json").read_text())
    assert meta["int8_mixed"] == {"onnxruntime": list(range(meta["num_layers"]))}
    assert f"(onnxruntime: layers {', '.join(map(str, range(meta['num_layers'])))}; counted from 0)" in \
        (out / "results.md").read_text()


def test_bench_names_the_layers_int8_mixed_kept(models):
    """A model with earlytag quantize's choice for one backend: the bench's meta names that choice for it and every
    layer for the backend without one (what quantized_roles gives the engine)."""
    from earlytag.bench import _int8_mixed_layers

    tagger = Tagger.from_pretrained(models / "big")
    num_layers = len(tagger.model.adapter.layers)
    tagger.model.config.int8_mixed = {"torch": {"float_ffn_out": [1]}}
    assert _int8_mixed_layers(tagger, ["torch", "onnxruntime"]) == {"torch": [1], "onnxruntime": list(range(num_layers))}
    tagger.model.config.int8_mixed = {"torch": {"float_ffn_out": []}}  # quantize found int8 alone good enough
    assert _int8_mixed_layers(tagger, ["torch"]) == {"torch": []}
    from earlytag.report import layer_list  # how results.md, quantize and the card name them

    assert [layer_list(x) for x in ([], [1], [3, 4])] == ["no layer", "layer 1", "layers 3, 4"]


def test_paired_alternates_blocks_of_units_and_collects_every_unit(monkeypatch):
    """``paired(..., block=N)`` (``bench --alternate N``): after the warm-up, the baseline runs N units, then the
    contender the same N, block after block (the last one shorter); unit by unit with N = 1. Each side's time is
    summed over its own runs only (a fake clock: the baseline's units take 3 ticks, the contender's 1), and the
    contender's output of every unit of the first pass is collected once, in order."""
    from earlytag import bench
    from earlytag.errors import ConfigError

    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    for block, expected in ((3, ["b0", "b1", "b2", "c0", "c1", "c2", "b3", "b4", "b5", "c3", "c4", "c5", "b6", "c6"]),
                            (1, ["b0", "c0", "b1", "c1", "b2", "c2", "b3", "c3", "b4", "c4", "b5", "c5", "b6", "c6"])):
        calls, collected = [], []

        def base(u, calls=calls):
            calls.append(f"b{u}")
            clock[0] += 3.0

        def contender(u, calls=calls):
            calls.append(f"c{u}")
            clock[0] += 1.0
            return u * 10

        timing = bench.paired(base, contender, list(range(7)), 2, collected.append, block=block)
        assert calls[:2] == ["b0", "c0"]  # the warm-up: one unit of each
        assert calls[2:16] == expected and calls[16:] == expected  # two passes
        assert collected == [u * 10 for u in range(7)]
        assert timing.ratios == [3.0, 3.0] and timing.seconds == 7.0 and timing.baseline_seconds == 21.0
    with pytest.raises(ConfigError, match="alternate"):
        bench.paired(lambda u: None, lambda u: None, [0], 1, block=0)


def test_ab_script_helpers_parse_build_the_workload_and_write_the_tables(models, tmp_path, monkeypatch, capsys):
    """The engine A/B scripts' shared pieces: the options (and one torch thread), the first N sentences in units of
    at most 8 batches of 32 with full depth and token exit at τ, and the file written whole with the command line,
    the workload and the machine under the tables."""
    from earlytag.bench import ab_finish, ab_parser, ab_start, ab_workload

    data = tmp_path / "d.conll"
    data.write_text("".join(f"w{i}\tO\nParis\tB-LOC\n\n" for i in range(300)), encoding="utf-8")
    out = tmp_path / "ab.txt"
    argv = ["scripts/some_ab.py", str(models / "big"), "--data", str(data), "--sentences", "290", "--passes", "2",
            "--threshold", "0.2", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    threads = torch.get_num_threads()
    try:
        args = ab_start(ab_parser("x", precisions=["bf16"]))
        assert torch.get_num_threads() == 1 and args.precisions == ["bf16"] and args.passes == 2
    finally:
        torch.set_num_threads(threads)
    tagger = Tagger.from_pretrained(models / "big")
    docs, units, cfgs = ab_workload(tagger, args)
    assert len(docs) == 290 and docs[0] == ["w0", "Paris"]
    assert [len(u) for u in units] == [8, 2] and sum(b.size for u in units for b in u) == 290
    assert list(cfgs) == ["full depth", "token τ=0.2"] and cfgs["token τ=0.2"].threshold == 0.2
    ab_finish(args, ["| a |"])
    text = out.read_text(encoding="utf-8")
    assert text.startswith("| a |\n\npython scripts/some_ab.py " + " ".join(argv[1:]) + "; 290 sentences of ")
    assert "batch 32, median of 2 alternating passes, 1 thread" in text and text == capsys.readouterr().out
    ab_finish(args, ["| b |"], workload=False)
    assert "; 1 thread" in out.read_text(encoding="utf-8") and "sentences of" not in out.read_text(encoding="utf-8")


def test_engine_variants_ab_times_each_variant_and_compares_labels(models, monkeypatch):
    """Each variant's setup runs before its settings, every setting runs over every unit after its warm-up, and the
    rows compare each variant with the baseline: the same labels (100%), a variant that changes the labels less."""
    from earlytag.bench import engine_variants_ab, prebuilt_batches, variants_ab_rows
    from earlytag.engine import ExitConfig

    tagger = Tagger.from_pretrained(models / "big")
    docs = [["Angela", "Merkel", "visited", "Paris", "."], ["Hi"], ["Obama", "met", "Putin", "in", "Geneva"]] * 3
    batches, _ = prebuilt_batches(tagger, docs, 4)
    calls, seen = [], []
    run_many = tagger.engine.run_many
    variants = {"plain": lambda: calls.append("plain"), "dense": lambda: calls.append("dense"),
                "wrong": lambda: calls.append("wrong")}
    cfgs = {"full depth": ExitConfig(), "static 1": ExitConfig("static", layer=1)}

    def fake_run(unit, cfg):  # the "wrong" variant labels every word otherwise
        outs = run_many(unit, cfg)
        if calls[-1] == "wrong":
            for o in outs:
                o.pred = o.pred + 1
        return outs

    monkeypatch.setattr(tagger.engine, "run_many", lambda unit, cfg: seen.append(len(unit)) or fake_run(unit, cfg))
    units = [batches[:2], batches[2:]]
    medians, labels = engine_variants_ab(tagger.engine, units, cfgs, variants, 2, batches[:1])
    assert calls == ["plain", "dense", "wrong"] * 2
    assert seen == [1, 2, len(batches) - 2] * 12  # warm-up, then each unit, per variant, setting and pass
    assert set(medians) == {(v, c) for v in variants for c in cfgs} and all(t > 0 for t in medians.values())
    rows = variants_ab_rows("fp32", medians, labels, "plain")
    assert [r.split(" | ")[1:3] for r in rows] == [[c, v] for c in cfgs for v in variants]
    share = {tuple(r.split(" | ")[1:3]): float(r.split(" | ")[-1].rstrip("% |")) for r in rows}
    assert share[("full depth", "dense")] == 100.0 and share[("full depth", "wrong")] < 100.0
    base = medians[("plain", "static 1")]
    assert f"| {base / medians[('dense', 'static 1')]:.2f}x |" in rows[4]
    # a variant's setup may hand back another engine (the same model loaded another way): that engine runs
    other = Tagger.from_pretrained(models / "big").engine
    ran = []
    monkeypatch.setattr(other, "run_many", lambda unit, cfg: ran.append(len(unit)) or run_many(unit, cfg))
    seen.clear()
    engine_variants_ab(tagger.engine, units, cfgs, {"plain": lambda: None, "other": lambda: other}, 1, batches[:1])
    assert seen == [1, 2, len(batches) - 2] * 2 and ran == [1, 2, len(batches) - 2] * 2
