"""The gates: what passes a reward model and a policy, each rule on its own numbers (the
rollback watch's test: test_sequential.py)."""

from __future__ import annotations

import pytest

from services.trainer.gates import (
    AnswerStats,
    Estimate,
    PolicyLimits,
    policy_gate,
    reward_model_gate,
)

# ---- the reward model gate ------------------------------------------------------------------


def acc(value: float, lower: float) -> Estimate:
    return Estimate(value, lower, alpha=0.05)


def test_the_first_reward_model_must_beat_chance_by_the_margin_on_its_bound():
    assert reward_model_gate(acc(0.70, 0.60), None, tolerance=0.05, first_margin=0.05).passed
    refused = reward_model_gate(acc(0.70, 0.54), None, tolerance=0.05, first_margin=0.05)
    assert not refused.passed
    assert refused.reasons == [
        "held-out accuracy 0.700: its 95% lower bound 0.540 < 0.550 (chance + margin)"
    ]


def test_the_first_reward_model_exactly_at_chance_plus_margin_passes():
    assert reward_model_gate(acc(0.8, 0.75), None, tolerance=0.0, first_margin=0.25).passed
    # 11 of 20: 0.55, the default floor, reached by the bound.
    assert reward_model_gate(acc(0.7, 11 / 20), None, tolerance=0.05, first_margin=0.05).passed


def test_a_later_reward_model_is_judged_on_its_gain_over_the_promoted_one():
    # Well above chance + margin, but its gain's bound is too far below zero.
    refused = reward_model_gate(
        acc(0.70, 0.62), acc(-0.10, -0.16), tolerance=0.05, first_margin=0.05
    )
    assert not refused.passed
    assert refused.reasons == [
        "held-out accuracy 0.700, -0.100 against the promoted RM: the gain's 95% lower bound "
        "-0.160 < -0.05"
    ]
    # A small loss whose bound stays within the tolerance: passes.
    assert reward_model_gate(
        acc(0.79, 0.7), acc(-0.01, -0.04), tolerance=0.05, first_margin=0.05
    ).passed
    # Below chance + margin, but no worse than the promoted RM: passes (chance is the first's).
    assert reward_model_gate(
        acc(0.52, 0.4), acc(0.0, -0.03), tolerance=0.05, first_margin=0.05
    ).passed


def test_a_gain_bound_exactly_at_minus_the_tolerance_passes():
    # 7 vs 8 of 10 groups, as the per-group differences give it: -0.1 exactly.
    assert reward_model_gate(
        acc(0.7, 0.5), acc(-0.05, -0.1), tolerance=0.1, first_margin=0.05
    ).passed
    assert not reward_model_gate(
        acc(0.7, 0.5), acc(-0.05, -0.1001), tolerance=0.1, first_margin=0.05
    ).passed


# ---- answer statistics ----------------------------------------------------------------------

EOS = 2


def test_answer_stats_count_end_of_turn_length_and_distinct_answers():
    answers = [[5, 6, EOS], [7, EOS], [8, 9, 10, 11], []]
    texts = ["a", "b", "a", ""]
    stats = AnswerStats.of(answers, texts, EOS)
    assert stats.end_of_turn_rate == 0.5  # two of four end on the end-of-turn token
    assert stats.mean_length == (3 + 2 + 4 + 0) / 4
    assert stats.distinct_rate == 3 / 4


def test_answer_stats_of_no_answers_are_zero_not_a_crash():
    assert AnswerStats.of([], [], EOS) == AnswerStats(0.0, 0.0, 0.0)


# ---- the policy gate ------------------------------------------------------------------------

LIMITS = PolicyLimits(
    min_win_rate=0.5,
    max_kl=20.0,
    max_tax_perplexity_ratio=1.25,
    min_end_of_turn_ratio=0.5,
    min_length_ratio=0.3,
    min_distinct_ratio=0.5,
)
REFERENCE = AnswerStats(end_of_turn_rate=0.9, mean_length=40.0, distinct_rate=0.8)
GOOD = dict(
    win_rate=Estimate(0.62, 0.53, alpha=0.05), kl=5.0, tax_perplexity_ratio=1.1, candidate=REFERENCE
)


def test_a_candidate_passing_every_check_passes_with_no_reasons():
    verdict = policy_gate(**GOOD, reference=REFERENCE, limits=LIMITS)
    assert verdict.passed is True
    assert verdict.reasons == [] and verdict.reason == ""


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            dict(win_rate=Estimate(0.58, 0.47, alpha=0.05)),
            "win rate 0.580: its 95% lower bound 0.470 is not above 0.5",
        ),
        (dict(kl=25.0), "KL to the reference 25.00 > 20.0 nats"),
        (dict(kl=-1.0), "negative mean KL -1.00: the measurement is broken"),
        (
            dict(tax_perplexity_ratio=1.4),
            "perplexity on untrained text x1.400 of the reference's > x1.25",
        ),
        (
            dict(candidate=AnswerStats(0.3, 40.0, 0.8)),
            "end-of-turn rate 0.30 collapsed (reference: 0.90)",
        ),
        (
            dict(candidate=AnswerStats(0.9, 10.0, 0.8)),
            "mean answer length 10.0 collapsed (reference: 40.0)",
        ),
        (
            dict(candidate=AnswerStats(0.9, 40.0, 0.3)),
            "distinct answers 0.30 collapsed (reference: 0.80)",
        ),
    ],
    ids=["win_rate", "kl_high", "kl_negative", "ptx", "end_of_turn", "length", "distinct"],
)
def test_each_failed_check_alone_refuses_with_exactly_its_reason(change, reason):
    verdict = policy_gate(**{**GOOD, **change}, reference=REFERENCE, limits=LIMITS)
    assert verdict.passed is False
    assert verdict.reasons == [reason]


def test_the_win_rate_decides_on_its_bound_not_its_point():
    # A point estimate well above the threshold whose bound is not: refused.
    noisy = policy_gate(
        **{**GOOD, "win_rate": Estimate(0.66, 0.49, alpha=0.05)}, reference=REFERENCE, limits=LIMITS
    )
    assert not noisy.passed and "95% lower bound 0.490 is not above 0.5" in noisy.reason
    # The bound must lie above the threshold: exactly at it (a tie with the promoted policy,
    # which discrete verdicts often give) is refused. The confidence follows alpha.
    at = policy_gate(
        **{**GOOD, "win_rate": Estimate(0.6, 0.5, alpha=0.1)}, reference=REFERENCE, limits=LIMITS
    )
    assert not at.passed and "90% lower bound 0.500 is not above 0.5" in at.reason
    above = policy_gate(
        **{**GOOD, "win_rate": Estimate(0.6, 0.501, alpha=0.1)}, reference=REFERENCE, limits=LIMITS
    )
    assert above.passed


def test_every_failed_check_is_reported_together():
    verdict = policy_gate(
        win_rate=Estimate(0.1, 0.02, alpha=0.05),
        kl=30.0,
        tax_perplexity_ratio=2.0,
        candidate=AnswerStats(0.0, 1.0, 0.1),
        reference=REFERENCE,
        limits=LIMITS,
    )
    assert not verdict.passed
    assert len(verdict.reasons) == 6  # all but the negative-KL check
    assert verdict.reason == "; ".join(verdict.reasons)
