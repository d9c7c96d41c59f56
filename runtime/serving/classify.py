"""Micro-batching for text classification: requests that arrive within `max_wait_s` of the first waiting one (or
until `max_texts` texts) run as one batch on a worker thread; each request gets its own rows back."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from paddle2ort.runtime.numeric import softmax

from .scheduler import QueueFull, ShuttingDown

log = logging.getLogger(__name__)


@dataclass
class _Job:
    texts: list
    future: asyncio.Future


class MicroBatcher:
    """Owned by one event loop. `classifier`: runtime.pipelines.TextClassifier (labels, predict_logits)."""

    def __init__(self, classifier, max_texts: int = 64, max_wait_s: float = 0.01, max_queue: int = 256,
                 retry_after: int = 1, metrics=None, name: str = "model"):
        self.clf, self.max_texts, self.max_wait_s = classifier, max_texts, max_wait_s
        self.max_queue, self.retry_after, self.metrics, self.name = max_queue, retry_after, metrics, name
        self.queue: asyncio.Queue[_Job] | None = None
        self.task: asyncio.Task | None = None
        self.accepting = True
        self.busy = False                   # a batch is running (its requests are not waiting)

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then end."""
        self.accepting = False
        if self.task is not None:
            await self.queue.join()
            self.task.cancel()

    async def classify(self, texts: list[str]) -> list[dict]:
        if not self.accepting:
            raise ShuttingDown("the server is shutting down")
        waiting = self.queue.qsize()
        # as the generation engines: max_queue bounds the requests waiting behind a busy classifier (0: none wait)
        # and never refuses one an idle classifier takes now
        if waiting >= self.max_queue and (waiting or self.busy):
            raise QueueFull(waiting, self.retry_after, self.max_queue)
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(list(texts), fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            n = len(jobs[0].texts)
            deadline = time.monotonic() + self.max_wait_s            # the bounded wait for more requests
            # a dynamically quantized model's answers move with their batch-mates: one client's answers must not
            # depend on another client's texts, so such a model runs one request a batch
            while n < self.max_texts and not getattr(self.clf, "batch_dependent", False):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                n += len(job.texts)
            texts = [t for j in jobs for t in j.texts]
            try:
                self.busy = True
                probs = await loop.run_in_executor(None, self._probs, texts)
                start = 0
                for j in jobs:
                    rows = probs[start:start + len(j.texts)]
                    start += len(j.texts)
                    if not j.future.done():
                        j.future.set_result(self._answers(rows))
            except Exception as e:                            # noqa: BLE001  (a failed batch fails its requests)
                if len(jobs) == 1:
                    log.exception("classifier batch failed")
                    if not jobs[0].future.done():
                        jobs[0].future.set_exception(e)
                else:                   # one request's texts must not fail the others batched with it: each alone
                    log.warning("a batch of %d requests failed (%s: %s); running each alone", len(jobs),
                                type(e).__name__, e)
                    await self._each_alone(loop, jobs)
            finally:
                self.busy = False
                for _ in jobs:
                    self.queue.task_done()
            if self.metrics is not None:
                self.metrics.classify_batch.labels(self.name).observe(len(texts))

    async def _each_alone(self, loop, jobs: list[_Job]) -> None:
        for j in jobs:
            try:
                rows = await loop.run_in_executor(None, self._probs, j.texts)
            except Exception as e:                            # noqa: BLE001  (this request's own failure)
                log.exception("classifier request failed")
                if not j.future.done():
                    j.future.set_exception(e)
            else:
                if not j.future.done():
                    j.future.set_result(self._answers(rows))

    def _probs(self, texts: list[str]) -> np.ndarray:
        return softmax(self.clf.predict_logits(texts)).astype(np.float32)

    def _answers(self, probs: np.ndarray) -> list[dict]:
        labels = self.clf.labels
        return [{"label": labels[int(p.argmax())], "score": float(p.max()),
                 "scores": {lab: float(v) for lab, v in zip(labels, p)}} for p in probs]
