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

SPIN_COUNT = "100000"


def keep_workers_spinning() -> None:
    """Set ``GOMP_SPINCOUNT`` unless the operator already chose one."""
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
