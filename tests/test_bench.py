"""earlytag bench on a tiny model: rows of the documented shape, markdown, plot; no timing assertions."""

from __future__ import annotations

import json

import pytest

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


def test_bench_writes_results(models, tmp_path, capsys, shared_data):
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
