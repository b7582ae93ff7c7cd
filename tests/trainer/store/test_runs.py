"""The run store on SQLite and on PostgreSQL: one active run at a time, fenced writes, stage
records, the reconciler's queries, rollbacks and the Alembic schema."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.trainer.store.runs import MIGRATIONS, LostFence, RunStore
from services.trainer.store.tables import runs

TABLES = {"runs", "stages", "rollbacks"}


@pytest.fixture
def store(database_url) -> Iterator[RunStore]:
    store = RunStore(database_url)
    try:
        yield store
    finally:
        store.close()


def _set_heartbeat(store: RunStore, run_id: str, at: datetime) -> None:
    with store.engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == run_id).values(heartbeat_at=at))


def _finished(store: RunStore, fence: int, status: str, until: datetime | None):
    """A run created, claimed with ``fence`` and finished as ``status`` (snapshot ``until``)."""
    run, created = store.create_run("test")
    assert created
    store.claim(run.id, fence)
    if until is not None:
        store.set_snapshot_until(run.id, fence, until)
    store.finish_run(run.id, fence, status)
    return store.get(run.id)


# ---- one active run -------------------------------------------------------------------------


def test_a_second_trigger_while_a_run_is_active_gets_that_run(store):
    run, created = store.create_run("500 new pairs >= 500")
    assert created is True
    assert run.status == "pending" and run.active and run.trigger == "500 new pairs >= 500"
    assert run.created_at.tzinfo is not None
    again, created_again = store.create_run("started by hand")
    assert created_again is False
    assert again.id == run.id and again.trigger == "500 new pairs >= 500"
    assert [r.id for r in store.recent()] == [run.id]


def test_two_triggers_at_the_same_moment_give_one_run(database_url):
    stores = [RunStore(database_url) for _ in range(2)]
    barrier = threading.Barrier(len(stores))
    results: list = [None] * len(stores)
    errors: list[BaseException] = []

    def trigger(index: int) -> None:
        try:
            barrier.wait(5)
            results[index] = stores[index].create_run(f"trigger {index}")
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=trigger, args=(i,)) for i in range(len(stores))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert sorted(created for _, created in results) == [False, True]
        assert len({run.id for run, _ in results}) == 1
        assert len(stores[0].recent()) == 1
    finally:
        for s in stores:
            s.close()


def test_finishing_a_run_frees_the_slot_for_a_new_one(store):
    run, _ = store.create_run("first")
    claimed = store.claim(run.id, 7)
    store.finish_run(claimed.id, 7, "succeeded")
    assert store.active_run() is None
    done = store.get(run.id)
    assert done.status == "succeeded" and not done.active and done.finished_at is not None
    second, created = store.create_run("second")
    assert created is True and second.id != run.id
    assert store.active_run().id == second.id


# ---- claims and fences ----------------------------------------------------------------------


def test_a_claim_makes_the_fence_the_owner_and_heartbeats_are_recorded(store):
    run, _ = store.create_run("test")
    assert run.fence == 0 and run.heartbeat_at is None
    claimed = store.claim(run.id, 41)
    assert claimed.status == "running" and claimed.fence == 41
    first_beat = claimed.heartbeat_at
    assert first_beat is not None
    time.sleep(0.01)
    store.heartbeat(run.id, 41)
    assert store.get(run.id).heartbeat_at > first_beat


def test_stages_are_recorded_with_attempts_outputs_and_seconds(store):
    run, _ = store.create_run("test")
    store.claim(run.id, 3)
    assert store.start_stage(run.id, 3, "snapshot") == 1
    outputs = {"snapshot_id": "snap_1", "groups": 12, "heldout": [1, 2], "nested": {"a": 0.5}}
    store.finish_stage(run.id, 3, "snapshot", "done", outputs)

    assert store.start_stage(run.id, 3, "reward_model") == 1
    store.finish_stage(run.id, 3, "reward_model", "failed", reason="attempt 1: exit 1")
    failed = store.get(run.id).stages["reward_model"]
    assert failed.status == "failed" and failed.reason == "attempt 1: exit 1"
    # A retry counts up, and while it runs the stage has no finish time.
    assert store.start_stage(run.id, 3, "reward_model") == 2
    running = store.get(run.id).stages["reward_model"]
    assert running.status == "running" and running.finished_at is None and running.seconds is None
    time.sleep(0.05)
    store.finish_stage(run.id, 3, "reward_model", "done", {"version": "r1"})

    got = store.get(run.id)
    assert list(got.stages) == ["snapshot", "reward_model"]
    snapshot, reward = got.stages["snapshot"], got.stages["reward_model"]
    assert snapshot.attempts == 1 and snapshot.outputs == outputs
    assert reward.attempts == 2 and reward.status == "done" and reward.outputs == {"version": "r1"}
    assert reward.seconds == (reward.finished_at - reward.started_at).total_seconds()
    assert 0.05 <= reward.seconds < 5
    assert got.outputs() == {"snapshot": outputs, "reward_model": {"version": "r1"}}


def test_a_worker_whose_fence_moved_on_can_write_nothing(store):
    run, _ = store.create_run("test")
    store.claim(run.id, 1)
    store.start_stage(run.id, 1, "snapshot")
    store.claim(run.id, 2)  # a new lease holder took the run over
    store.start_stage(run.id, 2, "snapshot")
    before = store.get(run.id)

    with pytest.raises(LostFence):
        store.heartbeat(run.id, 1)
    with pytest.raises(LostFence):
        store.start_stage(run.id, 1, "reward_model")
    with pytest.raises(LostFence):
        store.finish_stage(run.id, 1, "snapshot", "done", {"stale": True})
    with pytest.raises(LostFence):
        store.set_snapshot_until(run.id, 1, datetime.now(UTC))
    with pytest.raises(LostFence):
        store.finish_run(run.id, 1, "failed", "the old owner gave up")

    assert store.get(run.id) == before
    assert store.active_run().id == run.id
    # The new owner still writes.
    store.finish_stage(run.id, 2, "snapshot", "done", {"fresh": True})
    store.finish_run(run.id, 2, "succeeded")
    assert store.get(run.id).stages["snapshot"].outputs == {"fresh": True}


def test_a_claim_with_an_older_fence_does_not_take_the_run_back(store):
    run, _ = store.create_run("test")
    assert store.claim(run.id, 6) is not None  # the new owner (lease fence 6)
    # The old owner (fence 5) wakes up and claims: it must not become the owner again.
    stale = store.claim(run.id, 5)
    assert stale is None
    assert store.get(run.id).fence == 6
    store.heartbeat(run.id, 6)


def test_a_finished_run_cannot_be_claimed(store):
    run = _finished(store, 1, "failed", None)
    assert store.claim(run.id, 2) is None
    assert store.get(run.id).status == "failed" and store.get(run.id).fence == 1


def test_an_unknown_run_is_a_key_error(store):
    with pytest.raises(KeyError):
        store.get("run_missing")


# ---- what the trigger and the reconciler ask ------------------------------------------------


def test_last_finished_is_the_newest_snapshot_of_the_asked_statuses(store):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert store.last_finished() is None
    succeeded = _finished(store, 1, "succeeded", t0)
    rejected = _finished(store, 2, "rejected", t0 + timedelta(hours=1))
    _finished(store, 3, "failed", None)  # no snapshot: never the last trained window
    active, _ = store.create_run("still running")
    store.claim(active.id, 4)
    store.set_snapshot_until(active.id, 4, t0 + timedelta(hours=2))  # active: not finished

    assert store.last_finished().id == rejected.id
    newest = store.last_finished(("succeeded",))
    assert newest.id == succeeded.id and newest.snapshot_until == t0
    assert store.last_finished(("succeeded", "rejected")).id == rejected.id
    assert store.last_finished(("cancelled",)) is None


def test_stale_finds_an_active_run_whose_owner_stopped_beating(store):
    run, _ = store.create_run("test")
    store.claim(run.id, 1)
    assert store.stale(60) == []
    _set_heartbeat(store, run.id, datetime.now(UTC) - timedelta(minutes=5))
    assert [r.id for r in store.stale(60)] == [run.id]
    store.heartbeat(run.id, 1)
    assert store.stale(60) == []
    # A finished run is never stale, however old its heartbeat.
    _set_heartbeat(store, run.id, datetime.now(UTC) - timedelta(minutes=5))
    store.finish_run(run.id, 1, "failed")
    assert store.stale(60) == []


def test_stale_finds_a_run_no_worker_ever_claimed(store):
    run, _ = store.create_run("test")
    assert store.stale(60) == []
    time.sleep(0.2)
    assert [r.id for r in store.stale(0.1)] == [run.id]


def test_a_cancel_request_reaches_the_active_run_only(store):
    assert store.request_cancel() is None
    old = _finished(store, 1, "succeeded", None)
    run, _ = store.create_run("test")
    cancelled = store.request_cancel()
    assert cancelled.id == run.id and cancelled.cancel_requested is True
    assert store.get(run.id).cancel_requested is True
    assert store.get(old.id).cancel_requested is False


def test_note_records_a_reason_from_outside_the_owner(store):
    run, _ = store.create_run("test")
    store.claim(run.id, 9)
    store.note(run.id, "handed to another worker: no heartbeat for 60 s")
    assert store.get(run.id).reason == "handed to another worker: no heartbeat for 60 s"


def test_a_version_is_rolled_back_once(store):
    assert store.rolled_back("v3") is False
    assert store.record_rollback("v3", "v2", "thumbs-up fell") is True
    assert store.rolled_back("v3") is True
    assert store.record_rollback("v3", "v2", "again") is False
    assert store.rolled_back("v2") is False


# ---- the schema -----------------------------------------------------------------------------


def test_the_schema_comes_from_the_alembic_migration_and_goes_with_it(database_url):
    store = RunStore(database_url)
    try:
        assert set(sa.inspect(store.engine).get_table_names()) >= TABLES
        assert MIGRATIONS.schema_is_current(store.engine) is True
    finally:
        store.close()

    MIGRATIONS.downgrade(database_url, "base")
    engine = sa.create_engine(database_url)
    try:
        assert not TABLES & set(sa.inspect(engine).get_table_names())
        assert MIGRATIONS.schema_is_current(engine) is False
    finally:
        engine.dispose()

    # Migrating again (as a restarted service does) brings it all back, and is idempotent.
    MIGRATIONS.migrate(database_url)
    store = RunStore(database_url)
    try:
        assert set(sa.inspect(store.engine).get_table_names()) >= TABLES
        run, created = store.create_run("after a re-migration")
        assert created and store.get(run.id).status == "pending"
    finally:
        store.close()


def test_a_store_that_does_not_migrate_sees_an_unmigrated_database(database_url):
    store = RunStore(database_url, migrate=False)
    try:
        assert MIGRATIONS.schema_is_current(store.engine) is False
    finally:
        store.close()
