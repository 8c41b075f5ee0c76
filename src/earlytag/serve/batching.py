"""Micro-batching: concurrent requests share one engine call.

Requests wait at most ``max_wait_ms`` for company, up to ``max_batch`` texts; texts with the same exit
setting run together. The model runs on one worker thread (torch already uses every core), so requests
never compete for the CPU, and a failing request fails alone.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..api import Prediction, Tagger
from ..data.types import Sentence
from ..engine import ExitConfig


@dataclass
class _Job:
    sentences: list[Sentence]
    exit: ExitConfig
    future: asyncio.Future = field(repr=False)


@dataclass
class Result:
    docs: list[dict]
    mean_exit_layer: float
    flops_speedup: float
    batch_texts: int  # texts in the engine call this request shared


class MicroBatcher:
    def __init__(self, tagger: Tagger, max_batch: int = 64, max_wait_ms: float = 5.0, enabled: bool = True,
                 on_batch=None):
        self.tagger = tagger
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled
        self.on_batch = on_batch  # callback(number of texts) for metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="earlytag-model")
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        if self.enabled and self._worker is None:
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

    async def submit(self, sentences: list[Sentence], exit: ExitConfig) -> Result:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            docs, pred = await loop.run_in_executor(self.executor, self._tag, sentences, exit)
            return self._result(docs, pred, range(len(docs)), len(docs))
        job = _Job(sentences, exit, loop.create_future())
        await self.queue.put(job)
        return await job.future

    def _tag(self, sentences: list[Sentence], exit: ExitConfig) -> tuple[list[dict], Prediction]:
        if self.on_batch is not None:
            self.on_batch(len(sentences))
        return self.tagger.documents(sentences, exit)

    @staticmethod
    def _result(docs: list[dict], pred: Prediction, idx: range, batch_texts: int) -> Result:
        layers = [t["exit_layer"] for i in idx for t in docs[i]["tokens"]]
        mean = sum(layers) / len(layers) if layers else 0.0
        return Result([docs[i] for i in idx], mean, pred.flops_speedup(idx), batch_texts)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            n = len(jobs[0].sentences)
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                n += len(job.sentences)
            groups: dict[str, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(json.dumps(job.exit.to_dict(), sort_keys=True), []).append(job)
            for group in groups.values():
                await self._run_group(loop, group)

    async def _run_group(self, loop, group: list[_Job]) -> None:
        sentences = [s for job in group for s in job.sentences]
        try:
            docs, pred = await loop.run_in_executor(self.executor, self._tag, sentences, group[0].exit)
        except Exception as err:  # noqa: BLE001 - the error goes to the requests of this group only
            for job in group:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        start = 0
        for job in group:
            idx = range(start, start + len(job.sentences))
            start = idx.stop
            if not job.future.done():
                job.future.set_result(self._result(docs, pred, idx, len(sentences)))
