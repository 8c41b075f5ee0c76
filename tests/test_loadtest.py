"""Bounded load test on loopback: 200 concurrent requests against the real service, zero errors, all correct."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("uvicorn")

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
