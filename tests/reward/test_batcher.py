"""The dynamic batcher: concurrent requests share batches, keys never mix, the queue is bounded,
deadlines are honoured, and a failing batch fails only its own requests."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, wait

import pytest

from services.reward.batcher import DeadlineExceeded, DynamicBatcher, Overloaded


class Recorder:
    """A run_batch that squares numbers and remembers every batch it ran."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[tuple[object, list[int]]] = []
        self.gate = gate

    def __call__(self, key, items):
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append((key, list(items)))
        return [i * i for i in items]


def busy_batcher() -> tuple[threading.Event, Recorder, DynamicBatcher, Future]:
    """A started batcher whose worker is busy with the request ``blocker`` until ``gate`` is
    set: what is submitted meanwhile waits in the queue."""
    gate = threading.Event()
    run = Recorder(gate)
    batcher = DynamicBatcher(run, max_batch=4, window_s=0)
    batcher.start()
    blocker = batcher.submit([1])
    time.sleep(0.05)
    return gate, run, batcher, blocker


def test_concurrent_requests_share_batches_and_get_their_own_results():
    run = Recorder()
    batcher = DynamicBatcher(run, max_batch=32, window_s=0.05)
    batcher.start()
    futures = [batcher.submit([i, i + 100]) for i in range(40)]
    wait(futures, timeout=10)
    batcher.stop()
    assert [f.result() for f in futures] == [[i * i, (i + 100) ** 2] for i in range(40)]
    assert len(run.batches) < 10  # 80 items in batches of up to 32, not 40 calls
    assert max(len(items) for _, items in run.batches) <= 32


def test_a_batch_never_mixes_keys():
    gate = threading.Event()
    run = Recorder(gate)
    batcher = DynamicBatcher(run, max_batch=64, window_s=0.01)
    batcher.start()
    first = batcher.submit([0], key="v1")  # holds the worker until the gate opens
    time.sleep(0.05)
    rest = [batcher.submit([i], key="v1" if i % 2 else "v2") for i in range(1, 9)]
    gate.set()
    wait([first, *rest], timeout=10)
    batcher.stop()
    for key, items in run.batches:
        assert all((i % 2 == 1 or i == 0) == (key == "v1") for i in items)
    assert [f.result() for f in rest] == [[i * i] for i in range(1, 9)]


def test_a_full_queue_refuses_instead_of_growing():
    gate = threading.Event()
    batcher = DynamicBatcher(Recorder(gate), max_batch=4, window_s=0, max_queue=8)
    batcher.start()
    running = batcher.submit([1, 2, 3, 4])  # taken by the worker, blocked on the gate
    time.sleep(0.05)
    queued = batcher.submit(list(range(8)))
    with pytest.raises(Overloaded, match="8 items waiting"):
        batcher.submit([9])
    gate.set()
    wait([running, queued], timeout=10)
    assert batcher.submit([3]).result(10) == [9]  # room again
    batcher.stop()


def test_an_expired_request_costs_no_compute():
    gate, run, batcher, blocker = busy_batcher()
    late = batcher.submit([2], deadline=time.monotonic() + 0.01)
    time.sleep(0.05)
    gate.set()
    with pytest.raises(DeadlineExceeded):
        late.result(10)
    blocker.result(10)
    batcher.stop()
    assert all(2 not in items for _, items in run.batches)


def test_a_failing_batch_fails_its_requests_only():
    def run(key, items):
        if "bad" in items:
            raise ValueError("model exploded")
        return [len(i) for i in items]

    batcher = DynamicBatcher(run, max_batch=8, window_s=0)
    batcher.start()
    bad = batcher.submit(["bad"], key="a")
    with pytest.raises(ValueError, match="exploded"):
        bad.result(10)
    assert batcher.submit(["good"], key="a").result(10) == [4]
    batcher.stop()


def test_an_oversized_request_runs_in_chunks_of_max_batch():
    run = Recorder()
    batcher = DynamicBatcher(run, max_batch=3, window_s=0, max_queue=100)
    batcher.start()
    assert batcher.submit(list(range(7))).result(10) == [i * i for i in range(7)]
    batcher.stop()
    assert [len(items) for _, items in run.batches] == [3, 3, 1]


def test_a_request_cancelled_by_its_caller_is_skipped():
    gate, run, batcher, blocker = busy_batcher()
    abandoned = batcher.submit([2], deadline=time.monotonic() - 1)
    assert abandoned.cancel()
    gate.set()
    blocker.result(10)
    assert batcher.submit([3]).result(10) == [9]  # the worker is still alive
    batcher.stop()
    assert all(2 not in items for _, items in run.batches)
