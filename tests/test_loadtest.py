"""Bounded load test on loopback: 200 concurrent requests against the real service, zero errors, all correct."""

from __future__ import annotations

import json

import pytest

from .conftest import need_module

need_module("uvicorn")

from earlytag import Tagger  # noqa: E402
from earlytag.cli import main  # noqa: E402

from .conftest import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("load") / "model"
    Tagger(tiny_model("bert", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC")), tokenizer).save_pretrained(path)
    return path


def test_load_with_and_without_micro_batching(model_dir, tmp_path, capsys):
    out = tmp_path / "load.json"
    code = main(["loadtest", str(model_dir), "--requests", "200", "--concurrency", "200", "--exit", "token",
                 "--threshold", "0.3", "--json", str(out)])
    assert code == 0
    batched, unbatched = json.loads(out.read_text())
    for r in (batched, unbatched):
        assert r["requests"] == 200 and r["errors"] == 0 and r["wrong"] == 0
        assert r["p50_ms"] <= r["p99_ms"]
    assert unbatched["engine_calls"] == 200
    assert batched["engine_calls"] < 200  # concurrent requests shared engine calls
    assert "Micro-batching gain" in capsys.readouterr().out


def test_mixed_load_isolates_poison_and_counts_every_answer(model_dir, tmp_path, capsys):
    """A separate server process: a huge request, medium ones, single sentences and poisoned ones at once."""
    out = tmp_path / "mixed.json"
    code = main(["loadtest", str(model_dir), "--scenario", "mixed", "--requests", "40", "--huge", "1",
                 "--threads", "1", "--json", str(out)])
    assert code == 0, capsys.readouterr()
    r = json.loads(out.read_text())
    assert r["innocent_failures"] == 0
    assert r["classes"]["poisoned"]["statuses"] == {"422": 2}
    assert r["classes"]["huge"]["statuses"] == {"200": 1}
    assert r["metrics_statuses"] == r["client_statuses"] == {"200": 39, "422": 2}  # the warm-up included
    assert r["classes"]["sentence"]["p99_ms"] < r["classes"]["huge"]["p50_ms"]  # not stuck behind the huge one
    assert r["server_rss_mb"]["peak"] > 0
