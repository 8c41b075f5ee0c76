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

    from .app import Limits

    # throughput under a burst is measured here, not deadlines: a loaded machine must not turn waits into 504s
    app = create_app(model_dir, max_batch=max_batch, max_wait_ms=max_wait_ms, batching=batching,
                     limits=Limits(request_timeout_s=3600, max_queue_words=10 ** 8))
    with serve_in_thread(app, backlog=4096, **uvicorn_options(app.state.limits)) as url:
        return asyncio.run(_drive(url, payloads, expected, concurrency, exit, "batched" if batching else "unbatched"))


async def _drive(url: str, payloads: list[list[str]], expected: dict, concurrency: int, exit: dict | None,
                 mode: str) -> LoadResult:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await _until_ready(client, 120)
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


async def _until_ready(client, seconds: float, server=None) -> None:
    """Poll /ready until the service answers 200 (or its process exits, or ``seconds`` pass)."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            if (await client.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not become ready")
        await asyncio.sleep(0.05)


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


# ----------------------------------------------------------------------------- mixed load against a separate server


@dataclass
class MixedResult:
    """``earlytag loadtest --scenario mixed``: one server process, requests of every size at once."""

    requests: int
    seconds: float
    classes: dict[str, dict[str, Any]]  # per kind of request: count, statuses, latency percentiles
    innocent_failures: int  # non-200 answers to requests with valid texts
    poisoned_rejected: int  # 422 answers to requests with an invalid text
    server_rss_mb: dict[str, float]  # before the load, peak during it, after it
    metrics_statuses: dict[str, int]  # /predict answers by status as /metrics counted them
    client_statuses: dict[str, int]  # the same as the clients saw them
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _poison(text: str) -> str:
    """The text with a lone surrogate in the middle, as a JSON ``\\ud800`` escape would bring it."""
    middle = len(text) // 2
    return text[:middle] + "\ud800" + text[middle:]


def mixed_payloads(texts: list[str], requests: int = 500, poisoned_share: float = 0.05, huge: int = 2,
                   medium_share: float = 0.1, max_texts: int = 64, max_chars: int = 20_000) -> list[tuple[str, list[str]]]:
    """``(kind, texts)`` per request: ``huge`` requests of ``max_texts`` × ``max_chars`` characters first, then
    single sentences, with a share of medium requests (8 texts of ~2,000 characters) and of poisoned ones (one
    sentence plus one invalid text) spread among them."""

    def long_text(start: int, chars: int) -> str:
        out, i = [], start
        while sum(len(t) + 1 for t in out) < chars:
            out.append(texts[i % len(texts)])
            i += 1
        return " ".join(out)[:chars]

    payloads: list[tuple[str, list[str]]] = [("huge", [long_text(97 * j + i, max_chars) for j in range(max_texts)])
                                             for i in range(huge)]
    poison_every = round(1 / poisoned_share) if poisoned_share else 0
    medium_every = round(1 / medium_share) if medium_share else 0
    for i in range(requests - huge):
        if poison_every and i % poison_every == poison_every // 2:
            payloads.append(("poisoned", [texts[i % len(texts)], _poison(texts[(i + 1) % len(texts)])]))
        elif medium_every and i % medium_every == 1:
            payloads.append(("medium", [long_text(i + 7 * j, 2000) for j in range(8)]))
        else:
            payloads.append(("sentence", [texts[i % len(texts)]]))
    return payloads


def run_mixed(model_dir: str, texts: list[str], requests: int = 500, poisoned_share: float = 0.05, huge: int = 2,
              request_timeout_s: float = 900.0, threads: int | None = None) -> MixedResult:
    """Start ``earlytag serve`` in its own process, send every request of :func:`mixed_payloads` at once, and
    report latencies per kind of request, failures, the server's memory, and /metrics against what the clients
    saw."""
    import json as _json
    import os
    import subprocess
    import sys

    port = _free_port()
    cmd = [sys.executable, "-m", "earlytag.cli", "serve", str(model_dir), "--port", str(port),
           "--request-timeout", str(request_timeout_s), "--max-queue-words", str(10 ** 7)]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    payloads = mixed_payloads(texts, requests, poisoned_share, huge)
    try:
        result = asyncio.run(_drive_mixed(f"http://127.0.0.1:{port}", server, payloads))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    result.settings = {"requests": requests, "poisoned_share": poisoned_share, "huge_requests": huge,
                       "request_timeout_s": request_timeout_s, "model": str(model_dir),
                       "server_threads": threads, "cmd": " ".join(cmd[3:])}
    del _json
    return result


async def _drive_mixed(url: str, server, payloads: list[tuple[str, list[str]]]) -> MixedResult:
    import json as _json

    import httpx

    limits = httpx.Limits(max_connections=len(payloads) + 10, max_keepalive_connections=len(payloads) + 10)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        await _until_ready(client, 300, server)
        await client.post("/predict", json={"texts": ["Warm up the model in Paris."]})
        rss = {"before": _rss_mb(server.pid), "peak": 0.0}
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                rss["peak"] = max(rss["peak"], _rss_mb(server.pid))
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        outcomes: list[tuple[str, int, float]] = []

        async def one(kind: str, texts: list[str]) -> None:
            body = _json.dumps({"texts": texts})  # lone surrogates become \ud800 escapes, as a client sends them
            start = time.perf_counter()
            try:
                r = await client.post("/predict", content=body.encode(), headers={"content-type": "application/json"})
                status = r.status_code
            except httpx.HTTPError:
                status = 0  # no answer at all
            outcomes.append((kind, status, time.perf_counter() - start))

        start = time.perf_counter()
        await asyncio.gather(*(one(kind, texts) for kind, texts in payloads))
        seconds = time.perf_counter() - start
        stop.set()
        await sampler
        await asyncio.sleep(1.0)
        rss["after"] = _rss_mb(server.pid)
        metrics = (await client.get("/metrics")).text
    classes: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(k for k, _, _ in outcomes):
        rows = [(s, t) for k, s, t in outcomes if k == kind]
        ms = [1000 * t for _, t in rows]
        statuses: dict[str, int] = {}
        for s, _ in rows:
            statuses[str(s)] = statuses.get(str(s), 0) + 1
        classes[kind] = {"count": len(rows), "statuses": statuses, "p50_ms": statistics.median(ms),
                         "p99_ms": _percentile(ms, 0.99), "max_ms": max(ms)}
    client_statuses: dict[str, int] = {"200": 1}  # the warm-up
    for _, s, _ in outcomes:
        client_statuses[str(s)] = client_statuses.get(str(s), 0) + 1
    counted: dict[str, int] = {}
    for line in metrics.splitlines():
        if line.startswith('earlytag_requests_total{endpoint="/predict"'):
            status = line.split('status="')[1].split('"')[0]
            counted[status] = int(float(line.split()[-1]))
    innocent = sum(1 for k, s, _ in outcomes if k != "poisoned" and s != 200)
    poisoned = sum(1 for k, s, _ in outcomes if k == "poisoned" and s == 422)
    return MixedResult(len(payloads), seconds, classes, innocent, poisoned,
                       {k: round(v, 1) for k, v in rss.items()}, counted, client_statuses, {})


def markdown_mixed(r: MixedResult) -> str:
    from ..report import markdown_table

    rows = [[kind, c["count"], ", ".join(f"{s}: {n}" for s, n in sorted(c["statuses"].items())),
             f"{c['p50_ms']:.0f}", f"{c['p99_ms']:.0f}", f"{c['max_ms']:.0f}"] for kind, c in r.classes.items()]
    table = markdown_table(["request", "count", "answers", "p50 ms", "p99 ms", "max ms"], rows)
    return (f"{table}\n\n{r.requests} requests at once in {r.seconds:.1f} s; innocent failures: "
            f"{r.innocent_failures}; poisoned requests answered 422: {r.poisoned_rejected}; server memory (RSS) "
            f"{r.server_rss_mb['before']:.0f} MB before, {r.server_rss_mb['peak']:.0f} MB peak, "
            f"{r.server_rss_mb['after']:.0f} MB after; /predict answers counted in /metrics {r.metrics_statuses} "
            f"vs seen by the clients {r.client_statuses}.")
