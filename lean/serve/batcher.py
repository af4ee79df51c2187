"""Dynamic batching for one classifier: requests queue, and run together in one onnxruntime call.

The event loop only queues and wakes; tokenizing, padding and the session run happen on the model's
own worker thread, so a batch in flight never blocks other requests from arriving and being queued.
A batch takes whole requests, oldest first, up to `max_batch_size` texts, once it is full or its
oldest request has waited `max_wait_ms`. Inside a batch texts are grouped by length bucket and each
group is padded to its own longest text, so one long text does not make every short one pay for it.
If a batch fails, its requests are run one by one, so only the request that fails gets the error.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lean.serve.errors import QueueFull


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue + batching loop of one model; `await predict(texts)` gives `lean predict`'s dicts."""

    def __init__(self, name: str, model, executor: ThreadPoolExecutor, metrics, max_batch_size: int,
                 max_wait_ms: float, max_queue: int, max_length: int, buckets: tuple[int, ...], retry_after_s: int):
        self.name, self.model, self.executor, self.metrics = name, model, executor, metrics
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.max_length, self.retry_after_s = max_length, retry_after_s
        self.buckets = tuple(b for b in buckets if b < max_length) + (max_length,)
        self.queue: collections.deque[_Pending] = collections.deque()
        self.queued_texts = 0
        self._arrival = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        if self.queued_texts + len(texts) > self.max_queue:
            self.metrics.rejected.labels(self.name).inc()
            raise QueueFull(self.name, self.max_queue, self.retry_after_s)
        item = _Pending(texts, asyncio.get_running_loop().create_future())
        self.queue.append(item)
        self._set_depth(self.queued_texts + len(texts))
        self._arrival.set()
        return await item.future

    def _set_depth(self, n: int) -> None:
        self.queued_texts = n
        self.metrics.queue_depth.labels(self.name).set(n)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self._arrival.clear()
                await self._arrival.wait()
            # wait for company until the batch is full or the oldest request has waited max_wait
            while self.queued_texts < self.max_batch_size:
                left = self.queue[0].arrived + self.max_wait_s - time.perf_counter()
                if left <= 0:
                    break
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self._run_isolated, [p.texts for p in batch])
            except asyncio.CancelledError:
                for item in batch:
                    item.future.cancel()
                raise
            except Exception as e:  # the executor itself failed (shut down): fail this batch, keep serving
                results = [e] * len(batch)
            for item, result in zip(batch, results):
                if item.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    def _take(self) -> list[_Pending]:
        """Whole requests, oldest first, up to max_batch_size texts (a larger request goes alone)."""
        batch, count = [], 0
        while self.queue and (not batch or count + len(self.queue[0].texts) <= self.max_batch_size):
            item = self.queue.popleft()
            count += len(item.texts)
            if not item.future.done():  # drop requests whose client has already gone
                batch.append(item)
        self._set_depth(self.queued_texts - count)
        return batch

    # ---- worker thread ------------------------------------------------------------------------

    def _run_isolated(self, requests: list[list[str]]) -> list[Any]:
        """Per request: its predictions, or the exception it alone caused."""
        try:
            flat = self._infer([t for texts in requests for t in texts])
        except Exception as e:
            if len(requests) == 1:
                return [e]
            return [self._run_one(texts) for texts in requests]
        out, start = [], 0
        for texts in requests:
            out.append(flat[start:start + len(texts)])
            start += len(texts)
        return out

    def _run_one(self, texts: list[str]) -> Any:
        try:
            return self._infer(texts)
        except Exception as e:
            return e

    def _infer(self, texts: list[str]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        model = self.model
        if model.tokenizer is None:  # a linear model on whole texts (lean.runtime.tfidf): no tokens to pad
            predictions = model.predict(texts)
            self.metrics.batch_size.labels(self.name).observe(len(texts))
            self.metrics.inference.labels(self.name).observe(time.perf_counter() - t0)
            return predictions
        model.tokenizer.enable_truncation(self.max_length)  # counts the special tokens the post-processor adds
        try:
            encodings = model.tokenizer.encode_batch(texts)
        finally:
            model.tokenizer.no_truncation()
        groups: dict[int, list[int]] = collections.defaultdict(list)
        for i, e in enumerate(encodings):
            groups[bisect.bisect_left(self.buckets, len(e.ids))].append(i)
        logits: list[np.ndarray | None] = [None] * len(texts)
        for _, members in sorted(groups.items()):
            for start in range(0, len(members), self.max_batch_size):
                idx = members[start:start + self.max_batch_size]
                rows = model.run(_pad([encodings[i] for i in idx], model.pad_id, model.input_names))
                self.metrics.batch_size.labels(self.name).observe(len(idx))
                for i, row in zip(idx, rows):
                    logits[i] = row
        predictions = _predictions(np.stack(logits), model.label_names)
        self.metrics.inference.labels(self.name).observe(time.perf_counter() - t0)
        return predictions


def _pad(encodings, pad_id: int, input_names: list[str]) -> dict[str, np.ndarray]:
    """int64 (B, T) inputs, right-padded to the longest of these encodings."""
    length = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), length), dtype=np.int64)
    types = np.zeros((len(encodings), length), dtype=np.int64)
    for row, e in enumerate(encodings):
        n = len(e.ids)
        ids[row, :n], mask[row, :n], types[row, :n] = e.ids, 1, e.type_ids
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: feed[name] for name in input_names if name in feed}


def _predictions(logits: np.ndarray, label_names: list[str]) -> list[dict[str, Any]]:
    """The dicts `lean predict` prints: label, its softmax score, and every label's score."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=-1, keepdims=True)
    names = label_names or [f"LABEL_{i}" for i in range(probs.shape[1])]
    return [{"label": names[int(p.argmax())], "score": float(p.max()),
             "scores": {names[i]: float(v) for i, v in enumerate(p)}} for p in probs]
