"""InteractionSpool on its own: the bookkeeping the recorder relies on."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time

import pytest

from services.inference.gateway.spool import InteractionSpool, SpoolConflict
from tests.inference.gateway.gateway_helpers import make_interaction


@pytest.fixture
def spool(tmp_path):
    with InteractionSpool(tmp_path / "spool" / "spool.sqlite3") as spool:
        yield spool


def test_enqueue_and_due_in_order(spool):
    items = [make_interaction() for _ in range(5)]
    spool.enqueue(items[0])
    spool.enqueue_many(items[1:])
    assert spool.pending_count() == 5
    due = spool.due(3)
    assert [r.response_id for r in due] == [i.response_id for i in items[:3]]
    assert due[0].attempts == 0
    # The serving time is stamped at enqueue, so a late delivery keeps it.
    assert due[0].interaction.HasField("created_at")
    assert abs(due[0].interaction.created_at.ToNanoseconds() / 1e9 - time.time()) < 5
    stripped = due[0].interaction
    stripped.ClearField("created_at")
    assert stripped == items[0]


def test_file_is_private_and_in_wal_mode(tmp_path):
    path = tmp_path / "private.sqlite3"
    with InteractionSpool(path) as spool:
        spool.enqueue(make_interaction())
        assert stat.S_IMODE(os.stat(f"{path}-wal").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as db:  # WAL is a property of the file
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_enqueue_is_idempotent_and_refuses_conflicts(spool):
    item = make_interaction()
    spool.enqueue(item)
    spool.enqueue(item)  # a retry by the caller: nothing new
    assert spool.pending_count() == 1
    other = make_interaction()
    conflicting = make_interaction(item.response_id, answer="Red.")
    with pytest.raises(SpoolConflict):
        spool.enqueue_many([other, conflicting])
    assert spool.pending_count() == 1  # all or none
    nameless = make_interaction()
    nameless.response_id = ""
    with pytest.raises(ValueError):
        spool.enqueue(nameless)


def test_failed_records_wait_until_retry_at(spool):
    a, b = make_interaction(), make_interaction()
    spool.enqueue_many([a, b])
    first = spool.due(10)[0]
    spool.mark_failed(first.id, "UNAVAILABLE: down", time.time() + 60)
    assert [r.response_id for r in spool.due(10)] == [b.response_id]
    later = spool.due(10, now=time.time() + 61)
    assert [r.response_id for r in later] == [a.response_id, b.response_id]
    assert later[0].attempts == 1
    assert spool.next_due_at() <= time.time()
    assert spool.make_all_due() == 1  # the service is back: no record waits any more
    assert len(spool.due(10)) == 2


def test_delivered_records_are_gone(spool):
    items = [make_interaction() for _ in range(3)]
    spool.enqueue_many(items)
    ids = [r.id for r in spool.due(10)]
    assert spool.mark_delivered(ids[:2]) == 2
    assert spool.mark_delivered(ids[:2]) == 0  # a second delete changes nothing
    assert spool.pending_count() == 1
    assert spool.oldest_enqueued_at() is not None
    spool.mark_delivered(ids[2:])
    assert (spool.pending_count(), spool.oldest_enqueued_at(), spool.next_due_at()) == (
        0,
        None,
        None,
    )


def test_dead_letters_are_kept_and_can_be_requeued(spool):
    good, bad = make_interaction(), make_interaction()
    spool.enqueue_many([bad, good])
    record = spool.due(1)[0]
    spool.dead_letter(record.id, "INVALID_ARGUMENT: bad")
    assert (spool.pending_count(), spool.dead_count()) == (1, 1)
    (dead,) = spool.dead_letters()
    assert (dead.id, dead.response_id, dead.error, dead.attempts) == (
        record.id,
        bad.response_id,
        "INVALID_ARGUMENT: bad",
        1,
    )
    assert spool.requeue_dead() == 1
    assert (spool.pending_count(), spool.dead_count()) == (2, 0)
    assert spool.due(1)[0].id == record.id  # back in its old place


def test_concurrent_enqueues(spool):
    woken = []
    spool.add_listener(lambda: woken.append(1))

    def produce():
        for _ in range(20):
            spool.enqueue(make_interaction())

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert spool.pending_count() == 80
    assert len(woken) == 80


def test_reopened_spool_keeps_records(tmp_path):
    path = tmp_path / "spool.sqlite3"
    item = make_interaction()
    with InteractionSpool(path) as spool:
        spool.enqueue(item)
    with InteractionSpool(path) as spool:
        assert [r.response_id for r in spool.due(10)] == [item.response_id]
