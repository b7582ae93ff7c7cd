"""The one service life cycle: parts start in order, stop in reverse, and a failure on either
side neither leaves parts running nor stops the others from stopping."""

from __future__ import annotations

import threading

import pytest

from services.common.runtime import Part, ServiceProcess


def recorded(log: list[str], name: str, *, fail_start=False, fail_stop=False, alive=None):
    def start():
        if fail_start:
            raise RuntimeError(f"{name} cannot start")
        log.append(f"start {name}")

    def stop():
        log.append(f"stop {name}")
        if fail_stop:
            raise RuntimeError(f"{name} cannot stop")

    return Part(name, start, stop, alive or (lambda: True))


def test_parts_start_in_order_and_stop_in_reverse():
    log: list[str] = []
    process = ServiceProcess("svc", [recorded(log, n) for n in ("a", "b", "c")])
    process.start()
    assert process.alive
    process.stop()
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    process.stop()  # stopping twice stops nothing twice
    assert len(log) == 6


def test_a_part_that_fails_to_start_stops_those_started_and_the_error_propagates():
    log: list[str] = []
    parts = [recorded(log, "a"), recorded(log, "b"), recorded(log, "c", fail_start=True)]
    process = ServiceProcess("svc", parts)
    with pytest.raises(RuntimeError, match="c cannot start"):
        process.start()
    assert log == ["start a", "start b", "stop b", "stop a"]


def test_a_part_that_fails_to_stop_does_not_keep_the_others_running():
    log: list[str] = []
    parts = [recorded(log, "a"), recorded(log, "b", fail_stop=True), recorded(log, "c")]
    process = ServiceProcess("svc", parts)
    process.start()
    process.stop()
    assert log[3:] == ["stop c", "stop b", "stop a"]


def test_serve_until_signal_stops_when_a_part_dies():
    log: list[str] = []
    dead = threading.Event()
    process = ServiceProcess(
        "svc", [recorded(log, "a"), recorded(log, "worker", alive=lambda: not dead.is_set())]
    )
    threading.Timer(0.2, dead.set).start()
    process.serve_until_signal(poll_s=0.05)  # returns by itself: the worker died
    assert log == ["start a", "start worker", "stop worker", "stop a"]
    assert process.dead_parts() == []
