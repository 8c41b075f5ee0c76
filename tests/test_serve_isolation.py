"""The service under bad neighbours: a poisoned micro-batch, slow and huge requests, impatient and slow clients.

The model is a tiny random tagger whose ``documents`` is wrapped to be slow (a fixed time per engine call) or to
fail on a marker text, so that scheduling is observable without timing the real model."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time

import httpx
import pytest

from earlytag import Tagger
from earlytag.serve.app import Limits, create_app, uvicorn_options
from earlytag.serve.loadtest import serve_in_thread

from .conftest import tiny_model

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


class Recorder:
    """Wraps ``tagger.documents``: records every engine call's texts, sleeps, fails on a marker."""

    def __init__(self, tagger: Tagger, seconds_per_call: float = 0.0, poison: str | None = None):
        self.original = tagger.documents
        self.seconds = seconds_per_call
        self.poison = poison
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()
        tagger.documents = self

    def __call__(self, sentences, exit=None, batch_size=None):
        texts = [s.text for s in sentences]
        with self.lock:
            self.calls.append(texts)
        time.sleep(self.seconds)
        if self.poison is not None and any(self.poison in t for t in texts):
            raise RuntimeError("the model broke on this text")
        return self.original(sentences, exit, batch_size)

    @property
    def texts_run(self) -> int:
        return sum(len(c) for c in self.calls)


@pytest.fixture
def tagger(tokenizer):
    return Tagger(tiny_model("bert", labels=LABELS), tokenizer)


async def _ready(client: httpx.AsyncClient) -> None:
    while (await client.get("/ready")).status_code != 200:
        await asyncio.sleep(0.02)


def run_scenario(app, scenario):
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                await _ready(client)
                return await scenario(client)

    return asyncio.run(main())


def metric(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_a_poisoned_text_fails_alone(tagger):
    """One request that breaks the engine call it shares: the others of that call are retried and succeed."""
    rec = Recorder(tagger, poison="POISON")
    app = create_app(tagger, max_batch=64, max_wait_ms=200)
    innocent = [f"Innocent text number {i} about Paris" for i in range(10)]
    expected = {t: tagger.pipe.__self__.documents.original([tagger.to_sentence(t)])[0][0] for t in innocent}

    async def scenario(client):
        posts = [client.post("/predict", json={"texts": [t]}) for t in innocent[:5]]
        posts.append(client.post("/predict", json={"texts": ["ok", "this one is POISON"]}))
        posts += [client.post("/predict", json={"texts": [t]}) for t in innocent[5:]]
        answers = await asyncio.gather(*posts)
        return answers, (await client.get("/metrics")).text

    answers, metrics = run_scenario(app, scenario)
    poisoned = answers[5]
    innocent_answers = answers[:5] + answers[6:]
    assert [r.status_code for r in innocent_answers] == [200] * 10
    for text, r in zip(innocent, innocent_answers):
        assert r.json()["results"][0] == expected[text]
    assert poisoned.status_code == 500
    assert len(rec.calls[0]) == 12  # all of them shared one engine call first, then were retried apart
    assert metric(metrics, 'earlytag_requests_total{endpoint="/predict",status="500"}') == 1
    assert metric(metrics, 'earlytag_requests_total{endpoint="/predict",status="200"}') == 10


def test_invalid_unicode_is_a_422_naming_field_and_position(tagger):
    app = create_app(tagger)

    async def scenario(client):
        bad = await client.post("/predict", content='{"texts": ["fine", "a \\ud800 b"]}',
                                headers={"content-type": "application/json"})
        good = await client.post("/predict", json={"texts": ["still fine"]})
        return bad, good

    bad, good = run_scenario(app, scenario)
    assert bad.status_code == 422
    assert "texts[1]" in bad.json()["detail"] and "character 2" in bad.json()["detail"]
    assert "U+D800" in bad.json()["detail"]
    assert good.status_code == 200


@pytest.mark.parametrize("exit, fragment", [
    ({"policy": "token", "threshold": 0.1, "window": 2 ** 62}, "window"),
    ({"policy": "patience", "patience": 10 ** 9}, "patience"),
    ({"policy": "static", "layer": 2 ** 40}, "layer"),
])
def test_absurd_settings_are_422_not_500(tagger, exit, fragment):
    app = create_app(tagger)

    async def scenario(client):
        return await client.post("/predict", json={"texts": ["x y"], "exit": exit})

    r = run_scenario(app, scenario)
    assert r.status_code == 422, r.text
    assert fragment in str(r.json()["detail"])


def test_deadline_gives_504_and_drops_the_rest_of_the_work(tagger):
    rec = Recorder(tagger, seconds_per_call=0.2)
    limits = Limits(request_timeout_s=0.5, quantum_words=4)  # one text per engine call
    app = create_app(tagger, limits=limits, max_wait_ms=1)
    texts = [f"sentence {i} here" for i in range(30)]  # 30 calls of 0.2 s: far beyond the deadline

    async def scenario(client):
        start = time.perf_counter()
        r = await client.post("/predict", json={"texts": texts})
        took = time.perf_counter() - start
        await asyncio.sleep(0.8)  # the worker must not go on with the dropped request
        return r, took, (await client.get("/metrics")).text

    r, took, metrics = run_scenario(app, scenario)
    assert r.status_code == 504 and "0.5 s" in r.json()["detail"]
    assert took < 2.0
    assert rec.texts_run <= 5  # 2-3 pieces ran before the deadline, one may finish after it: not all 30
    assert metric(metrics, "earlytag_dropped_requests ") == 1
    assert metric(metrics, 'earlytag_requests_total{endpoint="/predict",status="504"}') == 1


def test_full_queue_turns_requests_away_with_retry_after(tagger):
    Recorder(tagger, seconds_per_call=0.3)
    app = create_app(tagger, limits=Limits(max_queue_words=40, quantum_words=1000), max_wait_ms=1)
    big = ["one two three four five six seven eight"] * 4  # 40 words with the special tokens

    async def scenario(client):
        first = asyncio.create_task(client.post("/predict", json={"texts": big}))
        await asyncio.sleep(0.05)  # the first is running; these wait
        second = asyncio.create_task(client.post("/predict", json={"texts": big}))
        await asyncio.sleep(0.05)
        third = await client.post("/predict", json={"texts": big})
        return await first, await second, third, (await client.get("/metrics")).text

    first, second, third, metrics = run_scenario(app, scenario)
    assert first.status_code == 200 and second.status_code == 200
    assert third.status_code == 503
    assert int(third.headers["retry-after"]) >= 1
    assert "busy" in third.json()["detail"]
    assert metric(metrics, 'earlytag_rejected_requests_total{reason="queue full"}') == 1


def test_a_short_request_is_not_starved_by_a_long_one(tagger):
    rec = Recorder(tagger, seconds_per_call=0.05)
    app = create_app(tagger, limits=Limits(quantum_words=16), max_wait_ms=1)
    long_texts = ["a b c d e f g h i j k l m n"] * 40  # 40 pieces of 16 words

    async def scenario(client):
        async def timed(payload):
            start = time.perf_counter()
            r = await client.post("/predict", json=payload)
            return r, time.perf_counter() - start

        big = asyncio.create_task(timed({"texts": long_texts}))
        await asyncio.sleep(0.12)
        small = await timed({"texts": ["Paris"]})
        return await big, small

    (big, t_big), (small, t_small) = run_scenario(app, scenario)
    assert big.status_code == 200 and small.status_code == 200
    assert len(big.json()["results"]) == 40
    assert t_small < 0.5 < t_big  # served within a piece or two, not after all 40
    big_calls = [i for i, c in enumerate(rec.calls) if c[0].startswith("a b c")]
    small_call = next(i for i, c in enumerate(rec.calls) if "Paris" in c)
    assert small_call < big_calls[-1] - 10


def _server(tagger, limits: Limits, **kw):
    app = create_app(tagger, limits=limits, **kw)
    return serve_in_thread(app, **uvicorn_options(limits))


def _wait_ready(url):
    deadline = time.time() + 30
    while httpx.get(url + "/ready").status_code != 200:
        assert time.time() < deadline
        time.sleep(0.05)


def test_a_client_that_goes_away_has_its_work_dropped(tagger):
    rec = Recorder(tagger, seconds_per_call=0.1)
    limits = Limits(quantum_words=4)
    with _server(tagger, limits, max_wait_ms=1) as url:
        _wait_ready(url)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/predict", json={"texts": [f"text {i}" for i in range(40)]}, timeout=0.5)
        time.sleep(1.0)
        ran = rec.texts_run
        time.sleep(0.5)
        assert rec.texts_run == ran < 20  # stopped soon after the client left, not after all 40
        metrics = httpx.get(url + "/metrics").text
        assert metric(metrics, "earlytag_dropped_requests ") == 1
        assert httpx.post(url + "/predict", json={"texts": ["alive"]}).status_code == 200


def test_slow_clients_are_cut_off(tagger):
    limits = Limits(read_timeout_s=1.0)
    with _server(tagger, limits) as url:
        _wait_ready(url)
        host, port = url.removeprefix("http://").split(":")
        silent = socket.create_connection((host, int(port)))
        dripping = socket.create_connection((host, int(port)))
        dripping.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: 100\r\n\r\n{\"texts\": [")
        start = time.time()
        for sock in (silent, dripping):
            sock.settimeout(5)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), answer
            sock.close()
        assert time.time() - start < 3
        assert httpx.post(url + "/predict", json={"texts": ["still serving"]}).status_code == 200


def test_an_internal_error_is_counted_and_keeps_the_connection(tagger):
    def broken(*args, **kwargs):
        raise ValueError("boom")

    tagger.documents = broken
    with _server(tagger, Limits()) as url:
        _wait_ready(url)
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/predict", body=b'{"texts": ["x"]}', headers={"content-type": "application/json"})
        r = conn.getresponse()
        assert r.status == 500 and b"internal error" in r.read()
        sock = conn.sock
        conn.request("GET", "/health")
        r = conn.getresponse()
        assert r.status == 200 and r.read()
        assert conn.sock is sock  # the same keep-alive connection
        conn.close()
        metrics = httpx.get(url + "/metrics").text
        assert metric(metrics, 'earlytag_requests_total{endpoint="/predict",status="500"}') == 1
