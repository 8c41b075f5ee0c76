"""``earlytag serve``: FastAPI app with micro-batching, limits, Prometheus metrics and a page at ``/``.

- ``POST /predict`` ``{"texts": [...], "exit": {...}}`` -> ``{"results": [...], "stats": {...}}``
- ``GET /health`` (alive), ``GET /ready`` (503 until the model is loaded), ``GET /metrics`` (Prometheus),
  ``GET /info`` (model facts for the page), OpenAPI docs at ``/docs``.

Nobody is hurt by a neighbour: a request that breaks the model fails alone (the others of its engine call are
retried without it), a long request runs in pieces that take turns with short ones, every request has a
deadline (504) and is dropped when its client goes away, the queue is bounded (503 + ``Retry-After``), slow
clients are cut off (408), and every response, 5xx included, is counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..api import Tagger
from ..engine.policies import POLICIES, REGISTRY
from ..errors import ConfigError, EarlytagError
from .batching import MicroBatcher, Overloaded

logger = logging.getLogger("uvicorn.error")  # shown where uvicorn shows its own start-up errors


@dataclass
class Limits:
    max_texts: int = 64  # texts per request
    max_chars: int = 20_000  # characters per text
    max_body_bytes: int = 2_000_000  # request body
    request_timeout_s: float = 60.0  # deadline of a request, queueing included (504 after it)
    read_timeout_s: float = 30.0  # a client must send its whole request within this (408 after it)
    max_queue_words: int = 200_000  # words waiting to be tagged; more gets 503 + Retry-After
    quantum_words: int = 512  # words of one request per engine call: long requests take turns with short ones
    max_call_words: int = 4096  # words per engine call


class ExitSettings(BaseModel):
    """Exit settings of one request; omitted fields take the model's stored default."""

    model_config = ConfigDict(extra="forbid")
    policy: Literal[POLICIES] | None = None  # type: ignore[valid-type]
    threshold: float | list[float] | None = None
    window: int | None = Field(None, ge=0, le=4096)
    patience: int | None = Field(None, ge=1, le=1000)
    patience_window: bool | None = None
    layer: int | None = Field(None, ge=1, le=1000)
    criterion: Literal["entropy", "maxprob"] | None = None
    pool: Literal["max", "mean"] | None = None
    upper_multiplier: float | None = None
    kv: Literal["keep", "drop"] | None = None
    halted: Literal["rescore", "frozen"] | None = None
    min_layer: int | None = Field(None, ge=1, le=1000)
    target_speedup: float | None = Field(None, description="pick the setting for this FLOPs speed-up from the "
                                                           "model's calibration table")
    length_profile: bool | None = Field(None, description="with target_speedup: solve the threshold for each "
                                                          "request's lengths from the calibration's length profile "
                                                          "(default, where the table has one), or false: hold the "
                                                          "target by feedback alone")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(..., min_length=1, description="raw texts to tag")
    exit: ExitSettings | None = None


class Stats(BaseModel):
    mean_exit_layer: float
    flops_speedup: float


class PredictResponse(BaseModel):
    results: list[dict[str, Any]]
    stats: Stats


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413 before they are read whole."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, {"detail": f"request body larger than {self.max_bytes} bytes"})
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, {"detail": f"request body larger than {self.max_bytes} bytes"})


class Observe:
    """Outermost ASGI middleware: counts every response by endpoint and status, and turns an unexpected
    exception into a counted 500 answer instead of a dropped keep-alive connection."""

    ENDPOINTS = ("/predict", "/health", "/ready", "/metrics", "/info", "/")

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500
        started = False

        async def observing_send(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        except Exception as err:  # noqa: BLE001 - one bad request must not take the connection down
            status = 500
            if not started:
                await _send_json(send, 500, {"detail": f"internal error: {type(err).__name__}"})
        finally:
            path = scope.get("path", "")
            endpoint = path if path in self.ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


# a target speed-up's controller on /metrics: its target, its policy (or the calibration's default), and whether it
# solves τ from the length profile or holds the target by feedback alone
CONTROL_LABELS = ["target", "policy", "control"]


class Metrics:
    """Prometheus metrics in a registry of the app's own."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("earlytag_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("earlytag_request_seconds", "request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.texts = Counter("earlytag_texts", "texts tagged", registry=self.registry)
        self.words = Counter("earlytag_words", "words tagged", registry=self.registry)
        self.exit_layers = Counter("earlytag_word_exit_layers", "sum of the exit layers of all words",
                                   registry=self.registry)
        self.mean_exit_layer = Gauge("earlytag_mean_exit_layer", "mean exit layer of all words so far",
                                     registry=self.registry)
        self.request_exit_layer = Histogram("earlytag_request_mean_exit_layer", "mean exit layer per request",
                                            registry=self.registry, buckets=tuple(range(1, 25)))
        self.batch_texts = Histogram("earlytag_engine_batch_texts", "texts per engine call",
                                     registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.loaded = Gauge("earlytag_model_loaded", "1 once the model is loaded", registry=self.registry)
        self.queue_words = Gauge("earlytag_queue_words", "words waiting to be tagged", registry=self.registry)
        self.rejected = Counter("earlytag_rejected_requests", "requests turned away", ["reason"],
                                registry=self.registry)
        self.dropped = Gauge("earlytag_dropped_requests", "requests dropped before all their work ran "
                                                           "(deadline passed or client gone)", registry=self.registry)
        self.control_tau = Gauge("earlytag_target_speedup_threshold", "threshold the controller of a target "
                                 "speed-up runs with now", CONTROL_LABELS, registry=self.registry)
        self.control_window = Gauge("earlytag_target_speedup_realised_window", "realised FLOPs speed-up over the "
                                    "controller's window of recent tokens", CONTROL_LABELS, registry=self.registry)
        self.control_total = Gauge("earlytag_target_speedup_realised_total", "realised FLOPs speed-up since the "
                                   "start", CONTROL_LABELS, registry=self.registry)
        self.control_capped = Gauge("earlytag_target_speedup_capped", "1 when the target is out of reach at the "
                                    "threshold ceiling", CONTROL_LABELS, registry=self.registry)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _static_dir() -> Path:
    return Path(str(resources.files("earlytag.serve") / "static"))


def create_app(model: str | Path | Tagger, max_batch: int = 64, max_wait_ms: float = 5.0, batching: bool = True,
               limits: Limits | None = None, load_in_background: bool = True, load: dict | None = None,
               default_exit: dict | None = None) -> FastAPI:
    """The service for a model directory (loaded in a background thread: ``/ready`` says when) or a Tagger.
    ``load``: options of :meth:`Tagger.from_pretrained` (precision, backend, device). ``default_exit``: the exit
    of requests that send no ``exit`` object, in its fields (``{"target_speedup": 3}``: one controller holds 3x
    over all of that traffic, shared with requests that ask for 3x themselves); None: the model's stored
    default. Checked once the model is in: a setting the model cannot run keeps ``/ready`` at 503 with the
    reason."""
    limits = limits or Limits()
    load_options = dict(load or {})  # (the name `load` is the loader function below)
    service_exit = default_settings(default_exit)
    metrics = Metrics()
    state: dict[str, Any] = {"tagger": model if isinstance(model, Tagger) else None, "error": None, "batcher": None}
    controllers: dict[tuple[float, str | None, bool], Any] = {}  # (target, policy, length profile) -> controller

    def exit_for(tagger: Tagger, settings: dict):
        """A request's exit fields as the engine takes them: a fixed setting, or the one controller of its
        target speed-up (made on first use, then shared by all the traffic that asks for it)."""
        _check_length_profile(settings)
        settings = dict(settings)
        profile = settings.pop("length_profile", None) is not False
        if settings.get("target_speedup") is None:
            return tagger.exit_config(settings or None)
        key = (float(settings["target_speedup"]), settings.get("policy"), profile)
        if key not in controllers:
            controllers[key] = tagger.speed_controller(*key[:2], **({} if profile else {"profile": None}))
        return controllers[key]

    def load() -> None:
        try:
            state["tagger"] = Tagger.from_pretrained(model, **load_options)
        except Exception as err:  # noqa: BLE001 - reported by /ready
            state["error"] = str(err)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state["tagger"] is None:
            if load_in_background:  # /health answers at once, /ready says 503 until the model is in
                threading.Thread(target=load, name="earlytag-load", daemon=True).start()
            else:
                load()
        starter = asyncio.get_running_loop().create_task(_start_batcher())
        yield
        starter.cancel()
        if state["batcher"] is not None:
            await state["batcher"].stop()

    async def _start_batcher():
        while state["tagger"] is None and state["error"] is None:
            await asyncio.sleep(0.05)
        if state["tagger"] is not None and service_exit:
            try:  # the service's default exit, checked (and its controller made) before any request comes
                exit_for(state["tagger"], service_exit)
            except EarlytagError as err:
                state["error"] = f"the service's default exit {service_exit}: {err}"
                logger.error("%s", state["error"])
                return
        if state["tagger"] is not None:
            batcher = MicroBatcher(state["tagger"], max_batch, max_wait_ms, batching,
                                   on_batch=metrics.batch_texts.observe, quantum_words=limits.quantum_words,
                                   max_call_words=limits.max_call_words, max_queue_words=limits.max_queue_words)
            batcher.start()
            state["batcher"] = batcher
            metrics.loaded.set(1)

    app = FastAPI(title="earlytag", version=_version(), lifespan=lifespan,
                  description="Early-exit sequence labeling: every token reports the layer it exited at.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics)  # outermost: sees every status, 413 and 500 included
    app.state.limits = limits
    app.state.metrics = metrics
    app.state.model_state = state

    @app.exception_handler(EarlytagError)
    async def earlytag_error(request: Request, err: EarlytagError):
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, err: Overloaded):
        metrics.rejected.labels("queue full").inc()
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": str(err.retry_after)})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if state["error"] is not None:
            return JSONResponse({"ready": False, "error": state["error"]}, status_code=503)
        if state["batcher"] is None:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        batcher = state["batcher"]
        if batcher is not None:
            metrics.queue_words.set(batcher.queued_words)
            metrics.dropped.set(batcher.dropped)
        for (target, policy, _), control in controllers.items():
            labels = (f"{target:g}", policy or "default", "profile" if control.profile is not None else "feedback")
            metrics.control_tau.labels(*labels).set(control.tau)
            metrics.control_window.labels(*labels).set(control.realised_window)
            metrics.control_total.labels(*labels).set(control.realised_total)
            metrics.control_capped.labels(*labels).set(float(control.capped))
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/info")
    async def info():
        tagger = state["tagger"]
        if tagger is None:
            return JSONResponse({"detail": "model not loaded yet"}, status_code=503)
        calib = tagger.config.exit_calibration or {}
        speedups = sorted({round(r["flops_speedup"], 2) for r in calib.get("table", [])})
        return {"task": tagger.config.task, "labels": tagger.labels, "num_layers": tagger.num_layers,
                "default_exit": tagger.default_exit.to_dict(), "service_default_exit": service_exit or None,
                "limits": limits.__dict__,
                "max_target_speedup": speedups[-1] if speedups else None,
                "policies": [{"name": n, "summary": r.summary} for n, r in REGISTRY.items()],
                "batching": batching, "encoder": tagger.config.encoder_name, "precision": tagger.precision,
                "backend": tagger.backend}

    @app.post("/predict", response_model=PredictResponse)
    async def predict(req: PredictRequest, request: Request):
        batcher: MicroBatcher | None = state["batcher"]
        if batcher is None:
            return JSONResponse({"detail": "model not loaded yet"}, status_code=503)
        if len(req.texts) > limits.max_texts:
            return JSONResponse({"detail": f"too many texts: {len(req.texts)} > {limits.max_texts} per request"},
                                status_code=413)
        for i, text in enumerate(req.texts):
            if len(text) > limits.max_chars:
                return JSONResponse({"detail": f"texts[{i}] has {len(text)} characters; the limit is "
                                               f"{limits.max_chars}"}, status_code=413)
        tagger = batcher.tagger
        # no exit object: the service's default (serve --exit/--target-speedup), else the model's stored one
        settings = req.exit.model_dump(exclude_none=True) if req.exit else service_exit
        exit_cfg = exit_for(tagger, settings)  # a bad setting: ConfigError, 422 naming the field
        sentences = [tagger.to_sentence(t, f"texts[{i}]") for i, t in enumerate(req.texts)]
        future = batcher.submit(sentences, exit_cfg)
        watcher = asyncio.create_task(_cancel_when_gone(request, future))
        try:
            result = await asyncio.wait_for(future, limits.request_timeout_s)  # cancels the work on timeout
        except asyncio.TimeoutError:
            metrics.rejected.labels("deadline").inc()
            return JSONResponse({"detail": f"the request did not finish within {limits.request_timeout_s:g} s; "
                                           "send fewer or shorter texts, or retry"}, status_code=504)
        finally:
            watcher.cancel()
        n_words = sum(len(d["tokens"]) for d in result.docs)
        metrics.texts.inc(len(req.texts))
        metrics.words.inc(n_words)
        metrics.exit_layers.inc(result.mean_exit_layer * n_words)
        if metrics.words._value.get():
            metrics.mean_exit_layer.set(metrics.exit_layers._value.get() / metrics.words._value.get())
        metrics.request_exit_layer.observe(result.mean_exit_layer)
        return {"results": result.docs,
                "stats": {"mean_exit_layer": result.mean_exit_layer, "flops_speedup": result.flops_speedup}}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse((_static_dir() / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(_static_dir())), name="static")
    return app


def _version() -> str:
    from .. import __version__

    return __version__


async def _cancel_when_gone(request: Request, future: asyncio.Future, every_s: float = 0.1) -> None:
    """Cancel ``future`` (dropping the request's remaining work) when the client disconnects."""
    while not future.done():
        if await request.is_disconnected():
            future.cancel()
            return
        await asyncio.sleep(every_s)


def uvicorn_options(limits: Limits) -> dict[str, Any]:
    """The uvicorn settings the service runs with: h11 with a deadline for reading each request."""
    from .protocol import read_timeout_protocol

    return {"http": read_timeout_protocol(limits.read_timeout_s), "timeout_keep_alive": 5}


def default_settings(default_exit: dict | None) -> dict:
    """A service's default exit checked as a request's ``exit`` object is; errors name the field."""
    if not default_exit:
        return {}
    try:
        settings = ExitSettings(**default_exit).model_dump(exclude_none=True)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"exit.{field}", first["msg"]) from None
    _check_length_profile(settings)
    return settings


def _check_length_profile(settings: dict) -> None:
    if "length_profile" in settings and settings.get("target_speedup") is None:
        raise ConfigError("exit.length_profile", "only with exit.target_speedup")


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 64, max_wait_ms: float = 5.0,
          batching: bool = True, limits: Limits | None = None, load: dict | None = None,
          default_exit: dict | None = None) -> None:
    import uvicorn

    limits = limits or Limits()
    app = create_app(model, max_batch, max_wait_ms, batching, limits, load=load, default_exit=default_exit)
    uvicorn.run(app, host=host, port=port,
                log_level="info",
                **uvicorn_options(limits))
