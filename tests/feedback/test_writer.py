"""The single writer: group commit, per-request isolation, and what a failed commit means."""

from __future__ import annotations

import threading
from concurrent.futures import wait

import pytest
import sqlalchemy as sa

from services.feedback.errors import RefusalKind, Refused, StorageUnavailable
from services.feedback.store import database
from services.feedback.writer import StoreWriter

notes = sa.Table("notes", sa.MetaData(), sa.Column("text", sa.String(50), primary_key=True))


@pytest.fixture
def engine(database_url):
    engine = database.make_engine(database_url, writer=True)
    notes.metadata.create_all(engine)
    yield engine
    engine.dispose()


def add(text: str):
    def write(conn, _now):
        conn.execute(notes.insert().values(text=text))
        return text

    return write


def stored(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(notes.c.text)).scalars())


def test_requests_queued_during_a_commit_share_the_next_one(engine):
    commits = []
    writer = StoreWriter(engine, max_batch=64, after_commit=lambda: commits.append(1))
    writer.start()
    gate = threading.Event()
    blocker = writer.submit(lambda conn, now: gate.wait(10))
    futures = [writer.submit(add(f"n{i}")) for i in range(100)]
    gate.set()
    wait([blocker, *futures], timeout=30)
    writer.stop()
    assert [f.result() for f in futures] == [f"n{i}" for i in range(100)]
    assert stored(engine) == {f"n{i}" for i in range(100)}
    assert len(commits) <= 3  # the blocker's batch, then 64 + 36 (or fewer batches)


def test_a_refused_or_failing_request_leaves_nothing_and_spoils_nothing(engine):
    writer = StoreWriter(engine)
    writer.start()

    def refused(conn, now):  # write functions refuse before their first write
        raise Refused(RefusalKind.CONFLICT, "nope", "refused")

    def fails_half_way(conn, now):
        conn.execute(notes.insert().values(text="half-done"))
        raise RuntimeError("bug after a write")

    gate = threading.Event()
    writer.submit(lambda conn, now: gate.wait(10))
    results = [
        writer.submit(add("before")),
        writer.submit(refused),
        writer.submit(fails_half_way),
        writer.submit(add("before")),  # a duplicate key
        writer.submit(add("after")),
    ]
    gate.set()
    wait(results, timeout=30)
    writer.stop()
    assert results[0].result() == "before"
    assert isinstance(results[1].exception(), Refused)
    assert isinstance(results[2].exception(), RuntimeError)
    assert isinstance(results[3].exception(), sa.exc.IntegrityError)
    assert results[4].result() == "after"
    assert stored(engine) == {"before", "after"}


# PostgreSQL only: it can drop our connection in the middle of a transaction.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_failed_commit_acknowledges_nothing_and_the_writer_recovers(engine):
    writer = StoreWriter(engine)
    writer.start()
    gate = threading.Event()
    writer.submit(lambda conn, now: gate.wait(10))
    doomed = [
        writer.submit(add("lost-1")),
        # The database goes away under the open transaction (as in a failover).
        writer.submit(
            lambda conn, now: conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        ),
        writer.submit(add("lost-2")),
    ]
    gate.set()
    wait(doomed, timeout=30)
    assert all(isinstance(f.exception(), StorageUnavailable) for f in doomed)
    assert writer.call(add("next")) == "next"
    writer.stop()
    assert stored(engine) == {"next"}


def test_a_write_failing_last_in_its_batch_fails_only_its_request(engine):
    # On PostgreSQL the batch runs in pipeline mode, where this failure is only reported when
    # the pipeline ends, after every function has returned.
    writer = StoreWriter(engine)
    writer.start()
    gate = threading.Event()
    writer.submit(lambda conn, now: gate.wait(10))
    first, duplicate = writer.submit(add("once")), writer.submit(add("once"))
    gate.set()
    wait([first, duplicate], timeout=30)
    writer.stop()
    assert first.result() == "once"
    assert isinstance(duplicate.exception(), sa.exc.IntegrityError)
    assert stored(engine) == {"once"}


def test_a_request_reads_what_earlier_requests_of_its_batch_wrote(engine):
    writer = StoreWriter(engine)
    writer.start()

    def count(conn, now):
        return conn.execute(sa.select(sa.func.count()).select_from(notes)).scalar_one()

    gate = threading.Event()
    writer.submit(lambda conn, now: gate.wait(10))
    futures = [writer.submit(add("a")), writer.submit(add("b")), writer.submit(count)]
    gate.set()
    wait(futures, timeout=30)
    writer.stop()
    assert futures[2].result() == 2


def test_a_batch_reads_ahead_once_for_all_its_jobs(engine):
    seen: list[list[str]] = []
    writer = StoreWriter(engine, read_ahead=lambda conn, hints: seen.append(hints))
    writer.start()
    gate = threading.Event()
    writer.submit(lambda conn, now: gate.wait(10))  # no hint: nothing to read ahead
    futures = [writer.submit(add(name), read_ahead=name) for name in ("a", "b", "c")]
    gate.set()
    wait(futures, timeout=30)
    writer.stop()
    assert seen == [["a", "b", "c"]]
