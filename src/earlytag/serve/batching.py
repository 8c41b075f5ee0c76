"""Scheduling requests onto the model: micro-batching, fairness, deadlines, backpressure and isolation.

- **Micro-batching**: requests arriving within ``max_wait_ms`` of each other share one engine call (up to
  ``max_batch`` texts and ``max_call_words`` words); texts with the same exit setting run together.
- **Fair by size**: a long request runs in pieces of at most ``quantum_words`` words per engine call, and the
  waiting requests take turns (round robin), so a one-sentence request never waits behind more than one piece
  of a large one.
- **Backpressure**: at most ``max_queue_words`` words wait to be run; beyond that :meth:`MicroBatcher.submit`
  raises :class:`Overloaded` at once, with an estimate of when to retry (the service answers 503 +
  ``Retry-After``) instead of queueing without bound.
- **Deadlines and cancellation**: the caller awaits the returned future with its deadline (and cancels it when
  its client goes away); a cancelled request is dropped before its next piece runs, so its remaining work is
  never computed.
- **Isolation**: when an engine call fails, every request in it is retried alone, and only a request that fails
  again gets the error.

One worker thread runs the model (torch already uses every core). Everything else runs on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..api import Prediction, Tagger
from ..data.types import Sentence
from ..engine import ExitConfig
from ..engine.control import SpeedController
from ..errors import EarlytagError


class Overloaded(EarlytagError):
    """Too much work is waiting; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Result:
    docs: list[dict]
    mean_exit_layer: float
    flops_speedup: float
    batch_texts: int  # texts in the (largest) engine call this request shared
    engine_calls: int = 1  # engine calls its pieces ran in


@dataclass(eq=False)
class _Job:
    sentences: list[Sentence]
    exit: ExitConfig | SpeedController
    key: str  # requests with the same key can share an engine call
    future: asyncio.Future = field(repr=False)
    costs: list[int] = field(repr=False)  # words (+ special tokens) of each sentence
    next: int = 0  # first sentence not yet given to the engine
    docs: list[dict] = field(default_factory=list, repr=False)
    flops: float = 0.0
    flops_full: float = 0.0
    batch_texts: int = 0
    calls: int = 0

    @property
    def remaining(self) -> int:
        return sum(self.costs[self.next:])

    @property
    def dropped(self) -> bool:
        return self.future.done()  # cancelled (deadline, client gone) or failed


def _cost(sentence: Sentence) -> int:
    return len(sentence.tokens) + 2


class MicroBatcher:
    def __init__(self, tagger: Tagger, max_batch: int = 64, max_wait_ms: float = 5.0, enabled: bool = True,
                 on_batch=None, quantum_words: int = 512, max_call_words: int = 4096,
                 max_queue_words: int = 200_000):
        self.tagger = tagger
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled  # False: every request runs in engine calls of its own (still fair, bounded)
        self.on_batch = on_batch  # callback(number of texts) per engine call, for metrics
        self.quantum = quantum_words
        self.max_call_words = max_call_words
        self.max_queue_words = max_queue_words
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="earlytag-model")
        self.jobs: deque[_Job] = deque()
        self.queued_words = 0  # words of the pieces not yet given to the engine
        self.words_per_second = 2000.0  # running estimate, for Retry-After
        self.dropped = 0  # requests dropped before all their pieces ran (deadline, client gone)
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, sentences: list[Sentence], exit: ExitConfig | SpeedController) -> asyncio.Future:
        """Queue a request; returns the future of its :class:`Result`. Await it with a deadline; cancelling it
        drops the request's remaining work. Raises :class:`Overloaded` when the queue is full."""
        loop = asyncio.get_running_loop()
        costs = [_cost(s) for s in sentences]
        total = sum(costs)
        if self.jobs and self.queued_words + total > self.max_queue_words:
            wait = (self.queued_words + total) / max(self.words_per_second, 1.0)
            raise Overloaded(f"the service is busy ({self.queued_words} words waiting); retry later",
                             retry_after=max(1, math.ceil(wait)))
        key = f"control:{id(exit)}" if isinstance(exit, SpeedController) else json.dumps(exit.to_dict(), sort_keys=True)
        job = _Job(sentences, exit, key, loop.create_future(), costs)
        if not sentences:
            job.future.set_result(Result([], 0.0, 1.0, 0, 0))
            return job.future
        self.jobs.append(job)
        self.queued_words += total
        self._arrived.set()
        return job.future

    # ------------------------------------------------------------------ the worker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._forget_dropped()
            if not self.jobs:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self.enabled:
                await self._wait_for_company(loop)
            call = self._next_call()
            if call:
                await self._execute(loop, call)

    async def _wait_for_company(self, loop) -> None:
        """Give requests that arrive within max_wait of the first waiting one a chance to join the call."""
        deadline = loop.time() + self.max_wait
        while sum(len(j.sentences) - j.next for j in self.jobs) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _forget_dropped(self) -> None:
        if any(j.dropped for j in self.jobs):
            for job in [j for j in self.jobs if j.dropped]:
                self.jobs.remove(job)
                self.queued_words -= job.remaining
                self.dropped += 1

    def _next_call(self) -> list[tuple[_Job, int, int]]:
        """Pieces ``(job, start, end)`` for one engine call: the oldest waiting request's exit setting, then
        round robin over the requests with that setting, at most ``quantum`` words of each."""
        self._forget_dropped()
        if not self.jobs:
            return []
        key = self.jobs[0].key
        call: list[tuple[_Job, int, int]] = []
        texts = words = 0
        for job in self.jobs:
            if job.key != key:
                continue
            if texts >= self.max_batch or words >= self.max_call_words or (call and not self.enabled):
                break
            start = end = job.next
            taken = 0
            while end < len(job.sentences) and texts < self.max_batch:
                cost = job.costs[end]
                if end > start and (taken + cost > self.quantum or words + cost > self.max_call_words):
                    break
                taken += cost
                words += cost
                texts += 1
                end += 1
            if end > start:
                call.append((job, start, end))
        for job, start, end in call:
            job.next = end
            self.queued_words -= sum(job.costs[start:end])
        served = {id(job) for job, _, _ in call}  # round robin: who was served goes to the back
        self.jobs = deque([j for j in self.jobs if id(j) not in served] + [j for j, _, _ in call])
        return call

    async def _execute(self, loop, call: list[tuple[_Job, int, int]]) -> None:
        # a target speed-up: the controller itself goes to the tagger, which moves its thresholds between the
        # engine batches of this call, each chosen for that batch's lengths (one model thread: no other call
        # touches the controller meanwhile)
        exit_cfg = call[0][0].exit
        sentences = [s for job, a, b in call for s in job.sentences[a:b]]
        started = time.perf_counter()
        try:
            docs, pred = await loop.run_in_executor(self.executor, self._tag, sentences, exit_cfg)
        except Exception as err:  # noqa: BLE001 - find the request that fails, the others go on
            if len(call) == 1:
                self._fail(call[0][0], err)
                return
            for piece in call:
                await self._execute(loop, [piece])
            return
        seconds = time.perf_counter() - started
        words = sum(_cost(s) for s in sentences)
        self.words_per_second = 0.8 * self.words_per_second + 0.2 * (words / max(seconds, 1e-6))
        pos = 0
        for job, a, b in call:
            n = b - a
            self._deliver(job, docs[pos:pos + n], pred, range(pos, pos + n), len(sentences))
            pos += n

    def _tag(self, sentences: list[Sentence], exit: ExitConfig | SpeedController) -> tuple[list[dict], Prediction]:
        if self.on_batch is not None:
            self.on_batch(len(sentences))
        return self.tagger.documents(sentences, exit)

    def _deliver(self, job: _Job, docs: list[dict], pred: Prediction, idx: range, call_texts: int) -> None:
        if job.dropped:
            return
        job.docs.extend(docs)
        job.flops += sum(pred.doc_flops[i] for i in idx)
        job.flops_full += sum(pred.doc_flops_full[i] for i in idx)
        job.batch_texts = max(job.batch_texts, call_texts)
        job.calls += 1
        if len(job.docs) < len(job.sentences):
            return
        if job in self.jobs:
            self.jobs.remove(job)
        layers = [t["exit_layer"] for d in job.docs for t in d["tokens"]]
        mean = sum(layers) / len(layers) if layers else 0.0
        speedup = job.flops_full / job.flops if job.flops else 1.0
        job.future.set_result(Result(job.docs, mean, speedup, job.batch_texts, job.calls))

    def _fail(self, job: _Job, err: Exception) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
            self.queued_words -= job.remaining
        if not job.future.done():
            job.future.set_exception(err)
