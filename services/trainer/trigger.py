"""When to start a run: enough new comparisons, or a long enough wait with some.

A pure decision on what the feedback service's Stats reported, so it is tested without
Celery or clocks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    start: bool
    reason: str


def decide(
    new_pairs: int,
    waited_s: float,
    *,
    min_new_pairs: int,
    max_wait_s: float,
    min_pairs_after_wait: int,
    forced: bool = False,
) -> Decision:
    """``new_pairs``: comparison pairs recorded since the last run's snapshot; ``waited_s``:
    seconds since that run finished (or since the trainer first checked)."""
    if new_pairs == 0:
        return Decision(False, "no new comparisons since the last run")
    if forced:
        return Decision(True, f"started by hand with {new_pairs} new pairs")
    if new_pairs >= min_new_pairs:
        return Decision(True, f"{new_pairs} new pairs >= {min_new_pairs}")
    if waited_s >= max_wait_s and new_pairs >= min_pairs_after_wait:
        return Decision(
            True, f"waited {waited_s:.0f} s >= {max_wait_s:.0f} s with {new_pairs} new pairs"
        )
    return Decision(
        False,
        f"{new_pairs} new pairs < {min_new_pairs}, and after {waited_s:.0f} s of "
        f"{max_wait_s:.0f} s the wait is not over (or fewer than {min_pairs_after_wait} pairs)",
    )
