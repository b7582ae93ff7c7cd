"""Dynamic batching: concurrent callers' items share one forward pass.

Callers submit a list of items (the answers of one Score call) and get a future of their
results. A worker thread takes the oldest waiting request, waits up to ``window_s`` for more
to arrive (or until ``max_batch`` items are waiting), and runs one batch over the requests
that share the oldest one's ``key`` — the reward service keys requests by the model version
they were admitted under, so a batch never mixes versions and a call in flight during a reload
finishes on the version it started with. A request is never split between batches unless it
alone is larger than ``max_batch``.

The queue is bounded: past ``max_queue`` waiting items, submit raises :class:`Overloaded`
(the caller answers RESOURCE_EXHAUSTED). A request whose deadline passes while it waits fails
with :class:`DeadlineExceeded` and costs no compute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Overloaded(Exception):
    """The queue is full; retry later."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before it could run."""


@dataclass
class _Request(Generic[Item, Result]):
    key: Hashable
    items: Sequence[Item]
    deadline: float | None  # time.monotonic() seconds
    future: Future = field(default_factory=Future)


class DynamicBatcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[Hashable, list[Item]], Sequence[Result]],
        *,
        max_batch: int = 32,
        window_s: float = 0.005,
        max_queue: int = 512,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be positive")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._window_s = window_s
        self._max_queue = max_queue
        self._waiting: deque[_Request] = deque()
        self._queued_items = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def submit(
        self, items: Sequence[Item], key: Hashable = None, deadline: float | None = None
    ) -> Future:
        """Queue ``items``; the future resolves to their results, in order."""
        request = _Request(key, list(items), deadline)
        with self._cond:
            if self._stopping:
                raise Overloaded("shutting down")
            if self._queued_items + len(request.items) > self._max_queue:
                raise Overloaded(
                    f"{self._queued_items} items waiting; the queue holds {self._max_queue}"
                )
            self._waiting.append(request)
            self._queued_items += len(request.items)
            self._cond.notify_all()
        return request.future

    # ---- the worker thread ------------------------------------------------------------------

    def _take_batch(self) -> list[_Request] | None:
        """Block until a batch is due; None when stopping with nothing left."""
        with self._cond:
            while not self._waiting:
                if self._stopping:
                    return None
                self._cond.wait()
            due = time.monotonic() + self._window_s
            while (
                not self._stopping
                and self._queued_items < self._max_batch
                and (remaining := due - time.monotonic()) > 0
            ):
                self._cond.wait(remaining)
            key = self._waiting[0].key
            batch, size, keep = [], 0, deque()
            while self._waiting:
                request = self._waiting.popleft()
                fits = not batch or size + len(request.items) <= self._max_batch
                if request.key == key and fits:
                    batch.append(request)
                    size += len(request.items)
                else:
                    keep.append(request)
            self._waiting = keep
            self._queued_items -= size
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            now = time.monotonic()
            live = []
            for request in batch:
                if not request.future.set_running_or_notify_cancel():
                    continue  # its caller gave up (cancelled) while it waited
                if request.deadline is not None and request.deadline <= now:
                    request.future.set_exception(DeadlineExceeded("deadline passed in the queue"))
                else:
                    live.append(request)
            if live:
                self._execute(live)

    def _execute(self, batch: list[_Request]) -> None:
        items = [item for request in batch for item in request.items]
        try:
            results: list = []
            for start in range(0, len(items), self._max_batch):  # only one oversized request
                chunk = items[start : start + self._max_batch]
                results += list(self._run_batch(batch[0].key, chunk))
            if len(results) != len(items):
                raise RuntimeError(f"batch returned {len(results)} results for {len(items)}")
        except Exception as error:
            log.exception("batch of %d items failed", len(items))
            for request in batch:
                request.future.set_exception(error)
            return
        offset = 0
        for request in batch:
            request.future.set_result(results[offset : offset + len(request.items)])
            offset += len(request.items)
