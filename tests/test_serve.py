"""The HTTP service with the real app (TestClient) on a tiny model."""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import need_module

need_module("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from earlytag import Tagger  # noqa: E402
from earlytag.serve.app import Limits, create_app  # noqa: E402

from .conftest import tiny_model  # noqa: E402

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("serve") / "model"
    tagger = Tagger(tiny_model("bert", labels=LABELS), tokenizer)
    tagger.model.config.exit_calibration = {"table": [
        {"exit": {"policy": "token", "threshold": 0.05, "window": 2}, "score": 0.8, "flops_speedup": 1.4},
        {"exit": {"policy": "token", "threshold": 0.2, "window": 2}, "score": 0.7, "flops_speedup": 2.1},
        {"exit": {"policy": "token", "threshold": 0.4, "window": 1}, "score": 0.5, "flops_speedup": 3.2},
    ]}
    tagger.save_pretrained(path)
    return path


def wait_ready(client, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("service never became ready")


@pytest.fixture(scope="module")
def client(model_dir):
    app = create_app(str(model_dir), limits=Limits(max_texts=4, max_chars=200, max_body_bytes=4000))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def test_health_ready_and_docs(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True}
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_ready_is_503_until_loaded(model_dir, monkeypatch):
    import earlytag.serve.app as app_module

    slow = Tagger.from_pretrained

    def slow_load(path):
        time.sleep(1.0)
        return slow(path)

    monkeypatch.setattr(app_module.Tagger, "from_pretrained", staticmethod(slow_load))
    with TestClient(create_app(str(model_dir))) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 503
        assert c.post("/predict", json={"texts": ["x"]}).status_code == 503
        wait_ready(c)


@pytest.mark.parametrize("exit", [{"policy": "token", "threshold": 0.3, "window": 1},
                                  {"policy": "token", "threshold": 1.01, "upper_multiplier": 1.0, "min_layer": 2}],
                         ids=["token", "floor"])
def test_predict_matches_the_python_api(client, model_dir, exit):
    texts = ["Angela Merkel visited Paris.", "Hello there"]
    body = client.post("/predict", json={"texts": texts, "exit": exit}).json()
    tagger = Tagger.from_pretrained(model_dir)
    expected, pred = tagger.documents([tagger.to_sentence(t) for t in texts], exit)
    assert body["results"] == expected
    assert set(body["stats"]) == {"mean_exit_layer", "flops_speedup"}
    layers = [t["exit_layer"] for d in expected for t in d["tokens"]]
    assert body["stats"]["mean_exit_layer"] == pytest.approx(sum(layers) / len(layers))
    assert body["stats"]["flops_speedup"] == pytest.approx(pred.flops_speedup())
    if "min_layer" in exit:  # a τ everyone passes: every word halts at the floor (exit layers count from 1)
        assert set(layers) == {2}


def test_default_exit_and_target_speedup(client):
    assert client.post("/predict", json={"texts": ["a b"]}).status_code == 200
    body = client.post("/predict", json={"texts": ["Paris is nice"], "exit": {"target_speedup": 2.0}}).json()
    assert "results" in body


@pytest.mark.parametrize("payload, status, fragment", [
    ({"texts": ["a"] * 5}, 413, "too many texts"),
    ({"texts": ["x" * 201]}, 413, "texts[0] has 201 characters"),
    ({"texts": []}, 422, ""),
    ({"texts": "not a list"}, 422, ""),
    ({"texts": ["a"], "exit": {"policy": "token"}}, 422, "exit.threshold"),
    ({"texts": ["a"], "exit": {"policy": "warp"}}, 422, ""),
    ({"texts": ["a"], "exit": {"policy": "static", "layer": 99}}, 422, "exit.layer"),
    ({"texts": ["a"], "exit": {"policy": "token", "threshold": 0.1, "min_layer": 99}}, 422, "exit.min_layer"),
    ({"texts": ["a"], "exit": {"threshold": -1, "policy": "sentence"}}, 422, "exit.threshold"),
    ({"texts": ["a"], "exit": {"target_speedup": 0.5}}, 422, "exit.target_speedup"),
    ({"texts": ["a"], "exit": {"speed": 3}}, 422, ""),
])
def test_bad_requests(client, payload, status, fragment):
    r = client.post("/predict", json=payload)
    assert r.status_code == status, r.text
    assert fragment in str(r.json()["detail"])


def test_body_too_large_and_service_survives(client):
    r = client.post("/predict", content=b'{"texts": ["' + b"a" * 5000 + b'"]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "larger than 4000 bytes" in r.json()["detail"]
    r = client.post("/predict", content=b"{broken", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert client.post("/predict", json={"texts": ["still alive"]}).status_code == 200


def test_metrics_in_prometheus_format(client):
    client.post("/predict", json={"texts": ["count me"]})
    text = client.get("/metrics").text
    assert 'earlytag_requests_total{endpoint="/predict",status="200"}' in text
    assert "earlytag_request_seconds_bucket" in text
    assert "earlytag_mean_exit_layer" in text
    assert "earlytag_model_loaded 1.0" in text


def test_page_is_served(client):
    html = client.get("/").text
    assert 'id="tag-button"' in html and "/static/app.js" in html
    assert client.get("/static/app.js").status_code == 200


def test_concurrent_requests_share_engine_calls(model_dir):
    """Micro-batching: requests arriving together run in one engine call, each gets its own answer."""
    import httpx

    app = create_app(str(model_dir), max_batch=64, max_wait_ms=50)
    texts = [f"Text number {i} about Paris" for i in range(12)]
    expected = {t: Tagger.from_pretrained(model_dir)(t) for t in texts}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                while (await c.get("/ready")).status_code != 200:
                    await asyncio.sleep(0.05)
                answers = await asyncio.gather(*(c.post("/predict", json={"texts": [t]}) for t in texts))
                metrics = (await c.get("/metrics")).text
        return answers, metrics

    answers, metrics = asyncio.run(scenario())
    for text, r in zip(texts, answers):
        assert r.status_code == 200
        assert r.json()["results"][0] == expected[text]
    count = next(line for line in metrics.splitlines() if line.startswith("earlytag_engine_batch_texts_count"))
    assert float(count.split()[-1]) < len(texts)  # fewer engine calls than requests


# ----------------------------------------------------------------------------- the service's default exit

TEXTS = ["Angela Merkel visited Paris.", "Hello there", "The United Nations met in New York on Monday ."]


def test_default_exit_serves_requests_without_their_own(model_dir):
    fixed = {"policy": "token", "threshold": 1.01, "upper_multiplier": 1.0, "window": 1}  # all halt at layer 1
    tagger = Tagger.from_pretrained(model_dir)
    expected, _ = tagger.documents([tagger.to_sentence(t) for t in TEXTS], fixed)
    stored, _ = tagger.documents([tagger.to_sentence(t) for t in TEXTS], None)
    assert expected != stored  # the service's default and the model's stored one tag these texts differently
    with TestClient(create_app(str(model_dir), default_exit=fixed)) as c:
        wait_ready(c)
        assert c.post("/predict", json={"texts": TEXTS}).json()["results"] == expected
        # a request's own exit object wins (an empty one: the model's stored default)
        assert c.post("/predict", json={"texts": TEXTS, "exit": {}}).json()["results"] == stored
        assert c.get("/info").json()["service_default_exit"] == fixed


def test_default_target_speedup_is_one_controller_for_all_traffic(model_dir, monkeypatch):
    from earlytag.engine.control import SpeedController

    built = []
    original = SpeedController.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(SpeedController, "__init__", spy)
    with TestClient(create_app(str(model_dir), default_exit={"target_speedup": 2.0})) as c:
        wait_ready(c)
        assert len(built) == 1  # made when the model came in, before any request
        assert 'earlytag_target_speedup_threshold{control="feedback",policy="default",target="2"}' in c.get(
            "/metrics").text  # (this table has no length profile: the feedback alone)
        for _ in range(3):
            assert c.post("/predict", json={"texts": TEXTS}).status_code == 200
        words = sum(len(t.split()) for t in TEXTS)
        assert built[0].calls >= 3 and built[0].total[2] >= 3 * words  # the requests without exit ran under it
        asked = c.post("/predict", json={"texts": TEXTS, "exit": {"target_speedup": 2.0}})
        assert asked.status_code == 200 and len(built) == 1  # asking for the same target shares it
        assert c.post("/predict", json={"texts": TEXTS, "exit": {"target_speedup": 3.0}}).status_code == 200
        assert len(built) == 2 and built[1].target == 3.0
        assert c.get("/info").json()["service_default_exit"] == {"target_speedup": 2.0}


def test_a_default_exit_the_model_cannot_run_keeps_the_service_unready(model_dir, tmp_path):
    with TestClient(create_app(str(model_dir), default_exit={"policy": "token"})) as c:
        deadline = time.time() + 30
        while c.get("/ready").json().get("error") is None and time.time() < deadline:
            time.sleep(0.05)
        r = c.get("/ready")
        assert r.status_code == 503 and "default exit" in r.json()["error"] and "exit.threshold" in r.json()["error"]
        assert c.post("/predict", json={"texts": ["a"]}).status_code == 503
    bare = tmp_path / "bare"
    Tagger(tiny_model("bert", labels=LABELS), Tagger.from_pretrained(model_dir).tokenizer).save_pretrained(bare)
    with TestClient(create_app(str(bare), default_exit={"target_speedup": 2.0}, load_in_background=False)) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and "no calibration table" in r.json()["error"]


@pytest.mark.parametrize("default_exit, field", [({"speed": 3}, "exit.speed"),
                                                 ({"window": -1, "policy": "token"}, "exit.window"),
                                                 ({"length_profile": False}, "exit.length_profile")])
def test_a_malformed_default_exit_fails_before_the_service_starts(model_dir, default_exit, field):
    from earlytag.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        create_app(str(model_dir), default_exit=default_exit)


def test_serve_cli_passes_its_default_exit(model_dir, tmp_path, monkeypatch, capsys):
    import earlytag.serve.app as app_module
    from earlytag.cli import main

    seen = {}
    monkeypatch.setattr(app_module, "serve", lambda model, **kw: seen.update(kw))
    assert main(["serve", str(model_dir), "--target-speedup", "2", "--no-length-profile"]) == 0
    assert seen["default_exit"] == {"target_speedup": 2.0, "length_profile": False}
    assert main(["serve", str(model_dir), "--exit", "token", "--threshold", "0.2", "--window", "1"]) == 0
    assert seen["default_exit"] == {"policy": "token", "threshold": 0.2, "window": 1}
    assert main(["serve", str(model_dir)]) == 0 and seen["default_exit"] is None
    seen.clear()
    assert main(["serve", str(model_dir), "--no-length-profile"]) == 2
    assert "no-length-profile: only with --target-speedup" in capsys.readouterr().err
    bare = tmp_path / "bare"
    Tagger(tiny_model("bert", labels=LABELS), Tagger.from_pretrained(model_dir).tokenizer).save_pretrained(bare)
    assert main(["serve", str(bare), "--target-speedup", "2"]) == 2
    assert "has no calibration table" in capsys.readouterr().err and not seen  # the service never started
