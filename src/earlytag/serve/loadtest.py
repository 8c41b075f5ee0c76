"""A bounded load test of ``earlytag serve`` on loopback: N concurrent requests, then it stops.

    earlytag loadtest MODEL_DIR --requests 200 --concurrency 200 [--texts-per-request 2] [--data uner-en-ewt:dev]

The service runs in this process (uvicorn on a free loopback port), once with micro-batching and once
without. Every answer is checked against the Python API's answer for the same texts (tags, spans and exit
layers equal, scores within 1e-4), and latency percentiles and throughput are reported.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..api import Tagger

SAMPLE_TEXTS = [
    "Barack Obama visited the headquarters of Microsoft in Redmond on Tuesday.",
    "The European Union fined Google over its Android contracts, officials in Brussels said.",
    "I flew from Paris to New York with Air France and met Angela at the United Nations.",
    "Shares of Apple fell after the company warned about weak demand in China.",
    "My cat sleeps on the sofa all afternoon.",
    "Dr. Smith from Boston General Hospital will speak at the conference in Toronto.",
]


@dataclass
class LoadResult:
    mode: str
    requests: int
    concurrency: int
    errors: int
    wrong: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests_per_s: float
    texts_per_s: float
    engine_calls: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any, **config: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a background thread; yields its base URL and
    stops the server on exit. ``config``: more ``uvicorn.Config`` options (e.g. ``backlog``)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def same_document(a: dict, b: dict, tol: float = 1e-4) -> bool:
    if a["text"] != b["text"] or len(a["tokens"]) != len(b["tokens"]):
        return False
    for x, y in zip(a["tokens"], b["tokens"]):
        if (x["tag"], x["exit_layer"], x["start"], x["end"]) != (y["tag"], y["exit_layer"], y["start"], y["end"]):
            return False
        if abs(x["score"] - y["score"]) > tol:
            return False
    return [(s["start"], s["end"], s["label"]) for s in a["spans"]] == [(s["start"], s["end"], s["label"]) for s in b["spans"]]


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def run_load(model_dir: str, texts: list[str], requests: int = 200, concurrency: int = 200,
             texts_per_request: int = 2, exit: dict | None = None, batching: bool = True,
             max_batch: int = 64, max_wait_ms: float = 5.0) -> LoadResult:
    from .app import create_app, uvicorn_options

    payloads = [[texts[(i * texts_per_request + j) % len(texts)] for j in range(texts_per_request)]
                for i in range(requests)]
    tagger = Tagger.from_pretrained(model_dir)
    expected = {t: tagger(t, exit=exit) for t in {t for p in payloads for t in p}}

    app = create_app(model_dir, max_batch=max_batch, max_wait_ms=max_wait_ms, batching=batching)
    with serve_in_thread(app, backlog=4096, **uvicorn_options(app.state.limits)) as url:
        return asyncio.run(_drive(url, payloads, expected, concurrency, exit, "batched" if batching else "unbatched"))


async def _drive(url: str, payloads: list[list[str]], expected: dict, concurrency: int, exit: dict | None,
                 mode: str) -> LoadResult:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        deadline = time.monotonic() + 120
        while True:
            try:
                if (await client.get("/ready")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready")
            await asyncio.sleep(0.05)
        await client.post("/predict", json={"texts": payloads[0], "exit": exit})  # warm-up
        before = _engine_calls((await client.get("/metrics")).text)
        gate = asyncio.Semaphore(concurrency)
        latencies: list[float] = []
        errors = wrong = 0

        async def one(texts: list[str]) -> None:
            nonlocal errors, wrong
            async with gate:
                start = time.perf_counter()
                try:
                    r = await client.post("/predict", json={"texts": texts, "exit": exit})
                except httpx.HTTPError:
                    errors += 1
                    return
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors += 1
                    return
                docs = r.json()["results"]
                if len(docs) != len(texts) or not all(same_document(d, expected[t]) for d, t in zip(docs, texts)):
                    wrong += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(p) for p in payloads))
        seconds = time.perf_counter() - start
        calls = _engine_calls((await client.get("/metrics")).text) - before
    ms = [1000 * x for x in latencies] or [0.0]
    n_texts = sum(len(p) for p in payloads)
    return LoadResult(mode, len(payloads), concurrency, errors, wrong, seconds, statistics.median(ms),
                      _percentile(ms, 0.90), _percentile(ms, 0.99), max(ms), len(payloads) / seconds,
                      n_texts / seconds, int(calls))


def _engine_calls(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("earlytag_engine_batch_texts_count"):
            return float(line.split()[-1])
    return 0.0


def compare(model_dir: str, texts: list[str], **kwargs) -> list[LoadResult]:
    """The same load with and without micro-batching."""
    return [run_load(model_dir, texts, batching=True, **kwargs), run_load(model_dir, texts, batching=False, **kwargs)]


def markdown(results: list[LoadResult]) -> str:
    from ..report import markdown_table

    rows = [[r.mode, r.requests, r.concurrency, r.errors, r.wrong, f"{r.p50_ms:.0f}", f"{r.p90_ms:.0f}",
             f"{r.p99_ms:.0f}", f"{r.requests_per_s:.1f}", f"{r.texts_per_s:.1f}", r.engine_calls] for r in results]
    table = markdown_table(["mode", "requests", "concurrent", "errors", "wrong", "p50 ms", "p90 ms", "p99 ms",
                            "requests/s", "texts/s", "engine calls"], rows)
    if len(results) == 2 and results[1].texts_per_s:
        table += f"\n\nMicro-batching gain in throughput: {results[0].texts_per_s / results[1].texts_per_s:.2f}x."
    return table
