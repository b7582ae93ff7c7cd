"""The run lease on a real Redis: one holder at a time, fences that only grow, expiry without
renewal, the heartbeat thread and its failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from services.trainer.lease import Lease
from services.trainer.store.runs import LostFence
from tests.harness import wait_for

KEY = "test:trainer:run-lock"


@pytest.fixture
def client(trainer_redis_url) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(trainer_redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def leases(client) -> Iterator[list[Lease]]:
    """Leases a test makes; each released at the end so no heartbeat thread outlives it."""
    made: list[Lease] = []
    yield made
    for lease in made:
        lease.release()


def new_lease(client, leases, ttl_s: float) -> Lease:
    lease = Lease(client, ttl_s, key=KEY)
    leases.append(lease)
    return lease


def test_a_second_worker_cannot_take_a_held_lease(client, leases):
    first, second = new_lease(client, leases, 30), new_lease(client, leases, 30)
    assert first.acquire()
    assert not second.acquire()
    # The holder is the first worker, named by its fence.
    assert second.holder() == first.holder()
    assert first.holder().startswith(f"{first.fence}:")
    first.release()
    assert first.holder() is None
    assert second.acquire()
    assert second.holder().startswith(f"{second.fence}:")


def test_fences_strictly_increase_across_acquisitions(client, leases):
    fences = []
    for _ in range(5):
        lease = new_lease(client, leases, 30)
        assert lease.acquire()
        fences.append(lease.fence)
        # A refused attempt in between does not hand out an older fence later.
        assert not new_lease(client, leases, 30).acquire()
        lease.release()
    assert fences == sorted(set(fences)) and fences[0] > 0


def test_an_expired_lease_goes_to_another_worker_and_the_first_cannot_touch_it(client, leases):
    first = new_lease(client, leases, 0.2)
    assert first.acquire()
    time.sleep(0.35)  # no renewal: the lease expires
    second = new_lease(client, leases, 30)
    assert second.acquire()
    assert second.fence > first.fence
    assert first.renew() is False
    first.release()
    assert second.holder() is not None and second.holder().startswith(f"{second.fence}:")
    assert second.renew() is True


def test_keep_alive_holds_the_lease_past_its_ttl_and_beats_the_run(client, leases):
    lease = new_lease(client, leases, 0.3)
    assert lease.acquire()
    beats = []
    lease.keep_alive(0.05, lambda: beats.append(time.monotonic()))
    time.sleep(1.2)  # four TTLs
    assert lease.holder() is not None and lease.holder().startswith(f"{lease.fence}:")
    assert not new_lease(client, leases, 30).acquire()
    assert len(beats) >= 5
    assert not lease.lost.is_set()


def test_a_failing_heartbeat_marks_the_lease_lost_and_stops_beating(client, leases):
    lease = new_lease(client, leases, 5)
    assert lease.acquire()
    calls = []

    def heartbeat() -> None:
        calls.append(1)
        raise LostFence("the run has a newer owner")

    lease.keep_alive(0.05, heartbeat)
    wait_for(lease.lost.is_set, timeout=3, what="the lease to be marked lost")
    time.sleep(0.3)
    assert len(calls) == 1, "the heartbeat went on after it failed"


def test_a_lease_taken_from_under_keep_alive_is_marked_lost(client, leases):
    lease = new_lease(client, leases, 0.3)
    assert lease.acquire()
    beats = []
    lease.keep_alive(0.1, lambda: beats.append(1))
    client.set(KEY, "999999:someone-else:1")  # the lease moved on (say, after a pause)
    wait_for(lease.lost.is_set, timeout=3, what="the lease to be marked lost")
    lease.release()
    assert client.get(KEY) == b"999999:someone-else:1"


def test_release_stops_the_heartbeat_thread_and_frees_the_lease(client, leases):
    lease = new_lease(client, leases, 5)
    assert lease.acquire()
    beats = []
    lease.keep_alive(0.05, lambda: beats.append(1))
    wait_for(lambda: len(beats) >= 2, timeout=3, what="two heartbeats")
    threads_before = {t.name for t in threading.enumerate()}
    assert "lease-heartbeat" in threads_before
    lease.release()
    assert "lease-heartbeat" not in {t.name for t in threading.enumerate()}
    assert client.get(KEY) is None
    count = len(beats)
    time.sleep(0.3)
    assert len(beats) == count, "the heartbeat went on after release"
    assert new_lease(client, leases, 5).acquire()
