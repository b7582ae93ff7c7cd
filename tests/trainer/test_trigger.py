"""When a run starts: the trigger's decision on the pairs recorded and the time waited."""

from __future__ import annotations

import pytest

from services.trainer.trigger import decide

LIMITS = dict(min_new_pairs=500, max_wait_s=3600.0, min_pairs_after_wait=50)


@pytest.mark.parametrize("forced", [False, True])
def test_no_new_pairs_never_starts_a_run_even_forced_or_after_the_wait(forced):
    decision = decide(0, 10 * 3600.0, **LIMITS, forced=forced)
    assert decision.start is False
    assert "no new comparisons" in decision.reason


@pytest.mark.parametrize("new_pairs", [1, 49, 499])
def test_a_forced_run_starts_with_any_new_pairs(new_pairs):
    decision = decide(new_pairs, 0.0, **LIMITS, forced=True)
    assert decision.start is True
    assert str(new_pairs) in decision.reason


@pytest.mark.parametrize("new_pairs", [500, 501, 10_000])
def test_reaching_the_threshold_starts_a_run_at_once(new_pairs):
    decision = decide(new_pairs, 0.0, **LIMITS)
    assert decision.start is True
    assert f"{new_pairs} new pairs >= 500" in decision.reason


def test_below_the_threshold_before_the_wait_is_over_waits():
    decision = decide(499, 3599.0, **LIMITS)
    assert decision.start is False
    # The operator reads why: the pairs, the threshold, the time waited and the wait.
    for number in ("499", "500", "3599", "3600", "50"):
        assert number in decision.reason


@pytest.mark.parametrize("new_pairs", [50, 51, 499])
def test_after_the_longest_wait_enough_pairs_start_a_run(new_pairs):
    decision = decide(new_pairs, 3600.0, **LIMITS)
    assert decision.start is True
    assert "waited 3600 s >= 3600 s" in decision.reason
    assert f"{new_pairs} new pairs" in decision.reason


@pytest.mark.parametrize("new_pairs", [1, 49])
def test_after_the_longest_wait_too_few_pairs_do_not_start_a_run(new_pairs):
    decision = decide(new_pairs, 100 * 3600.0, **LIMITS)
    assert decision.start is False
    assert f"{new_pairs} new pairs < 500" in decision.reason
    assert "fewer than 50 pairs" in decision.reason
