"""The watch's always-valid tests (rollback and canary), rule by rule (its error rates, simulated:
test_rollback_error_rates.py)."""

from __future__ import annotations

import pytest

from services.trainer.sequential import canary_decision, compare_rates, rate_sequence, rollback_due

RULE = dict(alpha=0.05, margin=0.0, planned_votes=300)


def test_before_any_vote_the_rate_could_be_anything():
    assert rate_sequence(0, 0, 0.025, 300) == (0.0, 1.0)


def test_the_sequence_holds_the_observed_rate_and_narrows_with_votes():
    widths = []
    for votes in (10, 100, 1000, 10_000):
        low, high = rate_sequence(int(0.6 * votes), votes, 0.025, 300)
        assert low <= 0.6 <= high
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.05


def test_a_smaller_alpha_gives_a_wider_sequence():
    low_5, high_5 = rate_sequence(60, 100, 0.05, 300)
    low_1, high_1 = rate_sequence(60, 100, 0.01, 300)
    assert low_1 < low_5 and high_5 < high_1


@pytest.mark.parametrize(
    ("version", "parent"),
    [((0, 4), (4, 0)), ((1, 2), (8, 2)), ((55, 45), (60, 40))],
    ids=["four_votes_each", "few_votes", "close_rates"],
)
def test_no_rollback_until_the_version_is_shown_worse(version, parent):
    verdict = rollback_due(*version, *parent, **RULE)
    assert verdict.passed is False
    assert verdict.reason.startswith("not shown worse: thumbs-up in [")


def test_a_version_shown_worse_is_rolled_back_and_says_why():
    verdict = rollback_due(20, 40, 80, 20, **RULE)
    seen = compare_rates(20, 60, 80, 100, alpha=0.05, planned_votes=300)
    assert verdict.passed is True
    assert verdict.reasons == [f"worse than its parent: {seen.describe()} (60 votes, parent 100)"]
    assert seen.version[1] < seen.parent[0]


def test_the_margin_spares_a_version_worse_by_less_than_it():
    assert rollback_due(300, 700, 600, 400, **RULE).passed
    assert not rollback_due(300, 700, 600, 400, **{**RULE, "margin": 0.4}).passed


@pytest.mark.parametrize("version_up", [600, 800])
def test_an_equal_or_better_version_is_never_rolled_back(version_up):
    assert not rollback_due(version_up, 1000 - version_up, 600, 400, **RULE).passed


CANARY_RULE = dict(
    alpha=0.05,
    rollback_margin=0.0,
    promote_margin=0.05,
    planned_votes=300,
    max_wait_s=3600.0,
    at_longest_wait="promote",
)


def test_a_canary_shown_worse_than_the_promoted_version_is_rolled_back():
    decision = canary_decision(20, 40, 320, 80, waited_s=60, **CANARY_RULE)
    assert decision.action == "roll_back"
    assert decision.reason.startswith("worse than the promoted version: thumbs-up in [")
    assert "(60 votes, promoted 400)" in decision.reason


def test_a_canary_shown_not_worse_by_more_than_the_margin_is_promoted_early():
    decision = canary_decision(1900, 1100, 5400, 3600, waited_s=60, **CANARY_RULE)
    assert decision.action == "promote", decision.reason
    assert decision.seen.version[0] > decision.seen.parent[1] - 0.05


def test_an_undecided_canary_waits_then_gets_the_longest_wait_rule():
    votes = (12, 8, 50, 30)
    assert canary_decision(*votes, waited_s=3599, **CANARY_RULE).action == "wait"
    at_end = canary_decision(*votes, waited_s=3600, **CANARY_RULE)
    assert at_end.action == "promote" and "undecided after the longest wait" in at_end.reason
    cautious = {**CANARY_RULE, "at_longest_wait": "roll_back"}
    assert canary_decision(*votes, waited_s=3600, **cautious).action == "roll_back"
    # Shown worse wins over the longest wait.
    assert canary_decision(0, 40, 300, 100, waited_s=10**6, **CANARY_RULE).action == "roll_back"
