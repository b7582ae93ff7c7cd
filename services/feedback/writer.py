"""The single writer: every write to the store goes through one thread, with group commit.

Requests hand the writer a function of (connection, now); the writer runs what has queued up
since its last commit in one transaction and commits once.
Only after that commit (an fsync with SQLite's ``synchronous=FULL``) are the callers' futures
resolved, so a 2xx always means the event is on disk, while N concurrent events cost one fsync
instead of N. One writer also means SQLite never sees two writers fight over its lock.

A function must raise Refused (a client error) before its first write. A function that
raises anything else makes the writer roll the batch back and run it again with a SAVEPOINT
around each function, so the failure undoes only that function's writes and fails only its own
caller. If the commit itself fails, every caller of the batch gets StorageUnavailable and
nothing of it was acknowledged. On PostgreSQL the batch is sent in pipeline mode (below).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from services.feedback import metrics
from services.feedback.errors import Refused, StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteFn = Callable[[sa.Connection, datetime], T]
# Reads a batch's jobs will need, done once for the whole batch before they run: given the
# connection and the ``read_ahead`` values the batch's jobs were submitted with.
ReadAheadFn = Callable[[sa.Connection, list[Any]], None]


@dataclass
class _Job:
    fn: WriteFn
    # A concurrent Future for threads; an asyncio future (with its loop) for coroutines.
    future: Future | asyncio.Future
    loop: asyncio.AbstractEventLoop | None = None
    read_ahead: Any = None


def _settle(outcomes: list[tuple[asyncio.Future, bool, Any]]) -> None:
    """Resolve a batch's asyncio futures, in their loop (one wake-up for the whole batch)."""
    for future, ok, value in outcomes:
        if future.done():  # the caller went away (client disconnected)
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


_STOP = object()


class _Isolate(Exception):
    """A job failed unexpectedly in a batch run without savepoints: redo the batch with them."""


class StoreWriter:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        max_batch: int = 256,
        after_commit: Callable[[], None] | None = None,
        read_ahead: ReadAheadFn | None = None,
    ) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._after_commit = after_commit
        self._read_ahead = read_ahead
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._conn: sa.Connection | None = None

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, fn: WriteFn[T], read_ahead: Any = None) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put(_Job(fn, future, read_ahead=read_ahead))
        return future

    async def run(self, fn: WriteFn[T], read_ahead: Any = None) -> T:
        """Run ``fn`` in the next batch and wait for its commit, from async code.
        ``read_ahead``: what the writer's ``read_ahead`` function should read for it, together
        with the other jobs of its batch (one query instead of one per job)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(fn, future, loop, read_ahead))
        return await future

    def call(self, fn: WriteFn[T], timeout: float | None = 30.0) -> T:
        """Run ``fn`` in the next batch and wait for its commit, from a thread."""
        return self.submit(fn).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # ---- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            jobs = [self._queue.get()]
            while len(jobs) < self._max_batch:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in jobs:
                stopping = True
                jobs = [j for j in jobs if j is not _STOP]
            if jobs:
                self._run_batch(jobs)
        if self._conn is not None:
            self._conn.close()

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self._engine.connect()
        return self._conn

    def _run_isolated(self, conn: sa.Connection, job: _Job, now: datetime) -> tuple[bool, Any]:
        """Run one job in its own savepoint: its failure undoes only its own writes."""
        for attempt in (1, 2):
            try:
                with conn.begin_nested():
                    return True, job.fn(conn, now)
            except Refused as refused:
                return False, refused
            except sa.exc.IntegrityError as error:
                # Another replica wrote the same row between our check and our insert; the
                # second attempt sees its row and answers as for a retry.
                if attempt == 2:
                    log.error("write failed twice on a constraint", exc_info=True)
                    return False, error
            except Exception as error:
                log.exception("write failed")
                return False, error
        raise AssertionError("unreachable")

    @staticmethod
    def _run_plain(conn: sa.Connection, job: _Job, now: datetime) -> tuple[bool, Any]:
        try:
            return True, job.fn(conn, now)
        except Refused as refused:
            return False, refused
        except Exception as error:
            raise _Isolate from error

    def _attempt(self, jobs: list[_Job], now: datetime, isolate: bool) -> list[tuple[bool, Any]]:
        conn = self._connection()
        with conn.begin():
            if isolate:
                self._read_ahead_for(conn, jobs)
                return [self._run_isolated(conn, job, now) for job in jobs]
            if conn.dialect.name == "postgresql":
                return self._run_pipelined(conn, jobs, now)
            self._read_ahead_for(conn, jobs)
            return [self._run_plain(conn, job, now) for job in jobs]

    def _read_ahead_for(self, conn: sa.Connection, jobs: list[_Job]) -> None:
        hints = [job.read_ahead for job in jobs if job.read_ahead is not None]
        if hints and self._read_ahead is not None:
            self._read_ahead(conn, hints)

    def _run_pipelined(
        self, conn: sa.Connection, jobs: list[_Job], now: datetime
    ) -> list[tuple[bool, Any]]:
        """PostgreSQL: the batch, its read-ahead first, in psycopg's pipeline mode. A statement
        whose result nobody reads (most inserts and updates) is sent without waiting for the
        server's answer, so a vote costs a network round trip per read, not per statement; the
        server still runs them in order, so every read sees the writes before it. A statement's
        failure surfaces at the next read or at the pipeline's end, maybe inside a later job:
        any failure redoes the batch with savepoints, outside the pipeline, which puts it on
        its job."""
        try:
            with conn.connection.dbapi_connection.pipeline():
                self._read_ahead_for(conn, jobs)
                return [self._run_plain(conn, job, now) for job in jobs]
        except _Isolate:
            raise
        except Exception as error:  # a write that failed, reported when the pipeline synced
            raise _Isolate from error

    @staticmethod
    def _resolve(jobs: list[_Job], outcomes: list[tuple[bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for job, (ok, value) in zip(jobs, outcomes, strict=True):
            if job.loop is not None:
                by_loop.setdefault(job.loop, []).append((job.future, ok, value))
            elif ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, settled)

    def _run_batch(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        # A thread's job cancelled before it ran is dropped; a coroutine's job runs anyway (its
        # caller may have disconnected after sending: the vote still counts and a retry with
        # the same client_event_id finds it).
        jobs = [j for j in jobs if j.loop is not None or j.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        now = datetime.now(UTC)
        try:
            try:
                # Write functions raise Refused before their first write, so the common case
                # needs no savepoints (they cost more than the rest of a vote's SQL).
                outcomes = self._attempt(jobs, now, isolate=False)
            except _Isolate as failure:
                # A constraint conflict is expected now and then (a client's retry on
                # PostgreSQL, a race between replicas); anything else is worth a warning.
                expected = isinstance(failure.__cause__, sa.exc.IntegrityError)
                log.log(
                    logging.INFO if expected else logging.WARNING,
                    "a write failed (%s); redoing its batch of %d with savepoints",
                    failure.__cause__,
                    len(jobs),
                )
                outcomes = self._attempt(jobs, now, isolate=True)
        except Exception as error:
            log.error("commit failed; %d requests not acknowledged: %s", len(jobs), error)
            if self._conn is not None:
                self._conn.invalidate()
                self._conn = None
            self._resolve(jobs, [(False, StorageUnavailable(str(error)))] * len(jobs))
            return
        metrics.WRITE_BATCH.observe(len(jobs))
        metrics.COMMIT_LATENCY.observe(time.perf_counter() - started)
        self._resolve(jobs, outcomes)
        if self._after_commit is not None:
            self._after_commit()
