"""A durable local spool of served answers waiting to be recorded with the feedback service.

Every answer the gateway serves must reach the feedback service exactly once, even when that
service is down for a while. The gateway therefore never calls RecordInteraction on the request
path: it writes the record here (one SQLite transaction, fsynced) and returns the answer; the
:class:`~services.inference.gateway.recorder.InteractionRecorder` drains the spool in the
background and deletes a record only after the feedback service accepted it.

- None lost: ``enqueue`` returns only once the record is committed with ``synchronous=FULL``
  in WAL mode, so it survives a crash of the process and a power loss.
- None doubled: a record is deleted after delivery; if the process dies between the reply and
  the delete, the record is sent again, and RecordInteraction is idempotent on response_id
  (the second call is answered ``created = false`` and stores nothing).

Records the feedback service refuses for good (malformed, or the same response_id with other
content: a bug) go to a dead-letter table, so they neither block the others nor vanish.

Calling from async code: ``enqueue`` blocks for one fsync (about a millisecond on an SSD, more
on network disks), so an event loop should run it in a thread::

    await asyncio.to_thread(spool.enqueue_many, interactions)

and do so *before* it returns the response (for a stream, before the final ``[DONE]``), so an
answer a client received is always on disk. One spool per gateway process: the spool is
thread-safe (one connection behind a lock), but it is not meant to be drained by two
processes at once (that would be safe, thanks to idempotency, but would send records twice).

The file holds prompts, answers and feedback tokens in clear until they are delivered, so it
is created readable by its owner only (0600).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.common.generated.flywheel.v1 import feedback_pb2

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused, so logs and
                                           -- the dead-letter table can refer to them
    response_id TEXT NOT NULL UNIQUE,
    interaction BLOB NOT NULL,             -- serialized flywheel.v1.Interaction
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,         -- unix time (wall clock: it must survive restarts)
    last_error TEXT,
    enqueued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_next_attempt ON pending (next_attempt_at);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY,                -- the id it had in pending
    response_id TEXT NOT NULL,
    interaction BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    dead_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SpooledRecord:
    """One pending record, as :meth:`InteractionSpool.due` hands it to the recorder."""

    id: int
    response_id: str
    interaction: feedback_pb2.Interaction
    attempts: int
    enqueued_at: float


@dataclass(frozen=True)
class DeadRecord:
    """A record the feedback service refused for good, kept for inspection."""

    id: int
    response_id: str
    interaction: feedback_pb2.Interaction
    attempts: int
    error: str
    enqueued_at: float
    dead_at: float


class SpoolConflict(ValueError):
    """A response_id already pending with different content: the caller minted an id twice."""


def _comparable(data: bytes) -> feedback_pb2.Interaction:
    """The content that identifies a record (the serving time does not, as for the service)."""
    message = feedback_pb2.Interaction.FromString(data)
    message.ClearField("created_at")
    return message


class InteractionSpool:
    """Pending interactions in a SQLite file; see the module docstring for the guarantees."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Create the file 0600 before SQLite does (it would use the umask); SQLite gives the
        # -wal and -shm files the mode of the database file.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        # isolation_level=None: no implicit transactions; every write below is one explicit
        # BEGIN IMMEDIATE ... COMMIT. check_same_thread=False: guarded by self._lock instead.
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so a committed enqueue survives power loss
        # (NORMAL would only survive a crash of the process).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    # ---- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (cheaply, on the enqueuing thread) after each successful enqueue;
        the recorder uses it to wake up at once instead of at its next poll."""
        self._listeners.append(callback)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> InteractionSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- producer side -------------------------------------------------------------------

    def enqueue(self, interaction: feedback_pb2.Interaction) -> None:
        """Store one served answer durably. See :meth:`enqueue_many`."""
        self.enqueue_many([interaction])

    def enqueue_many(self, interactions: Iterable[feedback_pb2.Interaction]) -> None:
        """Store served answers durably, all or none, in one fsynced transaction (use this for
        the ``n`` candidates of one request: one disk flush instead of ``n``).

        An interaction without ``created_at`` is stamped with the current time, so a record
        delivered after an outage keeps the time it was served. Enqueuing a response_id that
        is already pending with the same content does nothing (safe to retry); with other
        content it raises :class:`SpoolConflict` and stores none of ``interactions``.
        """
        now = time.time()
        rows = []
        for interaction in interactions:
            if not interaction.response_id:
                raise ValueError("an interaction needs a response_id to be spooled")
            if not interaction.HasField("created_at"):
                stamped = feedback_pb2.Interaction()
                stamped.CopyFrom(interaction)
                stamped.created_at.FromNanoseconds(time.time_ns())
                interaction = stamped
            rows.append(
                (interaction.response_id, interaction.SerializeToString(deterministic=True))
            )
        if not rows:
            return
        with self._transaction() as db:
            for response_id, data in rows:
                inserted = db.execute(
                    "INSERT INTO pending (response_id, interaction, next_attempt_at, enqueued_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (response_id) DO NOTHING",
                    (response_id, data, now, now),
                ).rowcount
                if not inserted:
                    (existing,) = db.execute(
                        "SELECT interaction FROM pending WHERE response_id = ?", (response_id,)
                    ).fetchone()
                    if _comparable(existing) != _comparable(data):
                        raise SpoolConflict(
                            f"response_id {response_id!r} is already spooled with other content"
                        )
        for callback in self._listeners:
            callback()

    # ---- consumer side (the recorder) ----------------------------------------------------

    def due(self, limit: int, now: float | None = None) -> list[SpooledRecord]:
        """Up to ``limit`` records whose next attempt is due, oldest first."""
        rows = self._read(
            "SELECT id, response_id, interaction, attempts, enqueued_at FROM pending "
            "WHERE next_attempt_at <= ? ORDER BY id LIMIT ?",
            (time.time() if now is None else now, limit),
        )
        return [
            SpooledRecord(id, response_id, feedback_pb2.Interaction.FromString(data), n, at)
            for id, response_id, data, n, at in rows
        ]

    def next_due_at(self) -> float | None:
        """When the earliest pending record is due (unix time); None if nothing is pending."""
        return self._read("SELECT MIN(next_attempt_at) FROM pending")[0][0]

    def mark_delivered(self, ids: Iterable[int]) -> int:
        """Forget records the feedback service accepted; returns how many were pending."""
        ids = list(ids)
        if not ids:
            return 0
        with self._transaction() as db:
            return db.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in ids]).rowcount

    def mark_failed(self, record_id: int, error: str, retry_at: float) -> None:
        """Count a failed attempt and hold the record back until ``retry_at`` (unix time)."""
        self.mark_failed_many([record_id], error, retry_at)

    def mark_failed_many(self, ids: Iterable[int], error: str, retry_at: float) -> None:
        """:meth:`mark_failed` for many records in one transaction (a whole failed round)."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE pending SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                "WHERE id = ?",
                [(error, retry_at, i) for i in ids],
            )

    def make_all_due(self) -> int:
        """Cancel every record's backoff (the feedback service is back); returns how many."""
        now = time.time()
        with self._transaction() as db:
            return db.execute(
                "UPDATE pending SET next_attempt_at = ? WHERE next_attempt_at > ?", (now, now)
            ).rowcount

    def dead_letter(self, record_id: int, error: str) -> None:
        """Move a record the feedback service refused for good to the dead-letter table."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO dead (id, response_id, interaction, attempts, error, enqueued_at, "
                "dead_at) SELECT id, response_id, interaction, attempts + 1, ?, enqueued_at, ? "
                "FROM pending WHERE id = ?",
                (error, time.time(), record_id),
            )
            db.execute("DELETE FROM pending WHERE id = ?", (record_id,))

    # ---- inspection and repair -----------------------------------------------------------

    def pending_count(self) -> int:
        return self._read("SELECT COUNT(*) FROM pending")[0][0]

    def dead_count(self) -> int:
        return self._read("SELECT COUNT(*) FROM dead")[0][0]

    def oldest_enqueued_at(self) -> float | None:
        """When the oldest pending record was enqueued (unix time); None if none is pending."""
        return self._read("SELECT MIN(enqueued_at) FROM pending")[0][0]

    def dead_letters(self, limit: int = 100) -> list[DeadRecord]:
        """The most recent dead letters, newest first."""
        rows = self._read(
            "SELECT id, response_id, interaction, attempts, error, enqueued_at, dead_at "
            "FROM dead ORDER BY dead_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [
            DeadRecord(id, rid, feedback_pb2.Interaction.FromString(data), n, error, at, dead)
            for id, rid, data, n, error, at, dead in rows
        ]

    def requeue_dead(self, ids: Iterable[int] | None = None) -> int:
        """Give dead letters (all, or those ``ids``) another try, e.g. after fixing the bug
        that made them; returns how many went back to pending."""
        with self._transaction() as db:
            where, params = "", []
            if ids is not None:
                ids = list(ids)
                where = f" WHERE id IN ({','.join('?' * len(ids))})"
                params = ids
            moved = db.execute(
                "INSERT OR IGNORE INTO pending (id, response_id, interaction, attempts, "
                "next_attempt_at, last_error, enqueued_at) "
                f"SELECT id, response_id, interaction, 0, ?, error, enqueued_at FROM dead{where}",
                [time.time(), *params],
            ).rowcount
            db.execute(f"DELETE FROM dead{where}", params)
        if moved:
            for callback in self._listeners:
                callback()
        return moved
