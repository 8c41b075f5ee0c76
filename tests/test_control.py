"""Holding a target speed-up: the controller on a simulated stream (a text that gets harder, sorted by length,
shuffled, out of reach), and wired into the Tagger, predict, evaluate and the service."""

from __future__ import annotations

import json
import math
import random
import warnings

import pytest

from earlytag import Tagger
from earlytag.engine import ExitConfig
from earlytag.engine.control import SpeedController
from earlytag.errors import ConfigError

from .conftest import tiny_model
from .test_engine import SENTENCES


def plant(tau: float, difficulty: float, rng: random.Random) -> float:
    """A model's FLOPs speed-up at threshold τ on text of a given difficulty (more difficult: words climb further),
    with the noise of one batch: 1x at τ=0, rising with log τ, capped at 6x (every word leaves at layer 1)."""
    base = 1.0 + max(0.0, math.log10(tau / (1e-3 * difficulty)) * 1.3)
    return max(1.0, min(6.0, base * rng.uniform(0.93, 1.07)))


def run_stream(control: SpeedController, difficulties: list[float], seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    taus = []
    for d in difficulties:
        speed = plant(control.tau, d, rng)
        tokens = rng.randint(300, 700)
        full = tokens * 1e6
        control.observe(full / speed, full, tokens)
        taus.append(control.tau)
    return taus


BASE = ExitConfig("token", threshold=0.02)


@pytest.mark.parametrize("target", [2.0, 3.0, 4.0])
@pytest.mark.parametrize("stream", ["shifted", "sorted", "shuffled"])
def test_holds_the_target_within_ten_percent(target, stream):
    rng = random.Random(1)
    if stream == "shifted":  # calibrated on easy text, then the text gets three times harder
        difficulties = [1.0] * 10 + [3.0] * 190
    elif stream == "sorted":  # length-sorted: difficulty creeps up along the stream
        difficulties = [1.0 + 2.0 * i / 200 for i in range(200)]
    else:
        difficulties = [rng.uniform(1.0, 3.0) for _ in range(200)]
    control = SpeedController(BASE, target)
    taus = run_stream(control, difficulties)
    assert control.realised_after_warmup == pytest.approx(target, rel=0.10)
    assert not control.capped
    # no oscillation: after the warm-up the threshold changes direction rarely and moves little
    late = taus[60:]
    swings = sum(1 for a, b, c in zip(late, late[1:], late[2:]) if (b - a) * (c - b) < 0 and abs(c - b) > 0.15 * b)
    assert swings <= 10
    if stream == "shifted":  # settled on the new text: the threshold stays in a narrow band
        assert max(late) / min(late) < 1.6


def test_out_of_reach_caps_and_warns():
    control = SpeedController(BASE, 50.0, tau_max=0.3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_stream(control, [1.0] * 100)
    assert control.capped and control.tau == pytest.approx(0.3)
    assert any("out of reach" in str(w.message) for w in caught)
    state = control.to_dict()
    assert state["capped"] and state["target_speedup"] == 50.0 and state["realised_speedup_window"] < 10


def test_controller_needs_a_threshold_policy():
    with pytest.raises(ConfigError, match="exit.target_speedup"):
        SpeedController(ExitConfig("patience", patience=2), 2.0)
    with pytest.raises(ConfigError, match="exit.target_speedup"):
        SpeedController(BASE, 0.5)


@pytest.fixture(scope="module")
def calibrated_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("control") / "model"
    tagger = Tagger(tiny_model("bert", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"), seed=3), tokenizer)
    tagger.model.config.exit_calibration = {"table": [
        {"exit": {"policy": "token", "threshold": 0.3, "window": 1}, "score": 0.5, "flops_speedup": 1.5}]}
    tagger.save_pretrained(path)
    return path


def test_thresholds_move_between_engine_calls(calibrated_dir, monkeypatch):
    tagger = Tagger.from_pretrained(calibrated_dir)
    seen = []
    original = tagger.engine.run_many

    def spy(batches, cfg, refill=True):
        seen.append(cfg.threshold)
        return original(batches, cfg, refill)

    monkeypatch.setattr(tagger.engine, "run_many", spy)
    control = tagger.speed_controller(2.5)
    assert control.base.threshold == 0.3  # starts from the calibration table
    pred = tagger.predict_words(SENTENCES * 40, control, batch_size=4)
    assert len(seen) >= 5 and len(set(seen)) > 1  # one engine call per few batches, τ moving in between
    assert seen[0] == 0.3
    assert control.to_dict()["tokens"] == pred.stats.tokens
    assert pred.stats.flops_speedup == pytest.approx(control.realised_total, rel=1e-6)


def test_controller_batches_in_shuffled_order_give_each_sentence_its_own_answer(calibrated_dir, monkeypatch):
    """Under a controller the batches run in a fixed random order (no drift from short to long within a call);
    every sentence still gets its own tags, scores and exit layers back, as without the controller."""
    tagger = Tagger.from_pretrained(calibrated_dir)
    lengths = []
    original = tagger.engine.run_many

    def spy(batches, cfg, refill=True):
        lengths.extend(int(b.attention_mask.sum(1).max()) for b in batches)
        return original(batches, cfg, refill)

    monkeypatch.setattr(tagger.engine, "run_many", spy)
    words = [s[: 1 + i % len(s)] for i, s in enumerate(SENTENCES * 12)]  # lengths 1..len, mixed
    control = tagger.speed_controller(2.5, gain=0.0)  # τ held at its start: the same setting as the plain run
    held = tagger.predict_words(words, control, batch_size=4)
    assert lengths != sorted(lengths)  # not in length order
    plain = tagger.predict_words(words, control.base, batch_size=4)
    assert held.tags == plain.tags and held.exit_layers == plain.exit_layers
    flat = [x for doc in held.scores for x in doc]
    assert flat == pytest.approx([x for doc in plain.scores for x in doc], abs=1e-5)


def test_target_speedup_through_evaluate_predict_and_service(calibrated_dir, tmp_path, capsys, shared_data):
    from fastapi.testclient import TestClient

    from earlytag.cli import main
    from earlytag.serve.app import create_app

    tagger = Tagger.from_pretrained(calibrated_dir)
    result = tagger.evaluate("uner-en-ewt:dev", exit={"target_speedup": 2.0}, data_dir=shared_data)
    assert result["controller"]["target_speedup"] == 2.0 and result["controller"]["engine_calls"] > 1
    assert result["exit"]["policy"] == "token"
    src = tmp_path / "in.txt"
    src.write_text("\n".join(" ".join(s) for s in SENTENCES * 30) + "\n", encoding="utf-8")
    assert main(["predict", str(calibrated_dir), str(src), "--output", str(tmp_path / "o.jsonl"),
                 "--target-speedup", "2"]) == 0
    err = capsys.readouterr().err
    assert "holding it from token" in err and "target 2x held at" in err
    summary = json.loads(err[err.rindex("({") + 1:err.rindex(")")])
    assert summary["controller"]["target_speedup"] == 2.0
    with TestClient(create_app(str(calibrated_dir), load_in_background=False)) as client:
        while client.get("/ready").status_code != 200:
            pass
        for _ in range(3):
            assert client.post("/predict", json={"texts": [" ".join(s) for s in SENTENCES],
                                                 "exit": {"target_speedup": 2.0}}).status_code == 200
        metrics = client.get("/metrics").text
    assert 'earlytag_target_speedup_threshold{target="2"}' in metrics
    assert 'earlytag_target_speedup_realised_total{target="2"}' in metrics
