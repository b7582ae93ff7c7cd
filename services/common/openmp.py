"""OpenMP settings for processes that run torch from more than one thread.

Call :func:`keep_workers_spinning` before torch is imported (libgomp reads its
environment once, when torch loads it).

Why: every Python thread that runs a torch op gets its own OpenMP team. A
service loads weights on one thread and computes on another (the batcher), so
it soon has more OpenMP threads than cores, and libgomp then cuts the time its
idle workers spin before sleeping to a thousandth. Each of the thousands of
small ops in a forward pass then waits for a futex wake-up: on the 2-core CI
box the reward service's scoring ran ~17% slower for it. A spin count of 100k
(a few milliseconds) restores the single-team behaviour; an idle process still
sleeps after that, unlike ``OMP_WAIT_POLICY=ACTIVE``, which spins forever.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SPIN_COUNT = "100000"


def keep_workers_spinning() -> None:
    """Set ``GOMP_SPINCOUNT`` unless the operator already chose one."""
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def in_passing_thread(work: Callable[[], T]) -> T:
    """``work()`` on a thread that ends when it returns (its result or exception passed on).

    Why: each thread that runs a parallel torch op keeps an OpenMP team for the rest of its
    life. A team left behind by a one-off job (loading weights, packing them) counts against
    the cores, and libgomp then all but stops spinning in every team, so the thread that
    computes pays a futex wake-up per operator: the engine's decode step measured 36-40 ms
    instead of 23-25 ms on 2 cores. A team dies with its thread, so one-off torch work runs
    on a thread of its own, and only the computing thread keeps a team.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the caller, raised there
            failure.append(exc)

    thread = threading.Thread(target=run, name="torch-one-off")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
