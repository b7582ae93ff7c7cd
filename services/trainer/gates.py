"""The gates: pure decisions on measured numbers, so each rule is tested on its own.

The stages measure (held-out accuracy, win rate, KL, perplexity, answer statistics); these
functions decide and say why. A candidate passes only if every check passes. A statistic
measured on a sample (the win rate) is an :class:`Estimate`: the gate decides on its one-sided
lower confidence bound, not on the point, so a candidate no better than the promoted policy
passes at most about ``alpha`` of the time (tests/trainer/test_gate_error_rates.py measures it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Verdict:
    passed: bool
    # One line per failed check (empty when passed), for the run record and `train status`.
    reasons: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


# Accuracies are ratios of small counts: 7/10 against 8/10 - 0.1 must pass, though in floats
# 0.8 - 0.1 > 0.7. Comparisons allow this much rounding.
_ROUNDING = 1e-9


@dataclass(frozen=True)
class Estimate:
    """A statistic measured on a sample: its value and its one-sided (1 - ``alpha``) lower
    confidence bound."""

    value: float
    lower: float
    alpha: float

    @property
    def confidence(self) -> str:
        return f"{100 * (1 - self.alpha):g}%"


@dataclass(frozen=True)
class AnswerStats:
    """What the collapse checks compare between the candidate and the reference policy."""

    end_of_turn_rate: float  # answers that ended their turn
    mean_length: float  # tokens
    distinct_rate: float  # distinct answers / answers

    @classmethod
    def of(cls, answers: Sequence[Sequence[int]], texts: Sequence[str], eos: int) -> AnswerStats:
        n = max(len(answers), 1)
        return cls(
            end_of_turn_rate=sum(bool(a) and a[-1] == eos for a in answers) / n,
            mean_length=sum(len(a) for a in answers) / n,
            distinct_rate=len(set(texts)) / n,
        )


def reward_model_gate(
    accuracy: Estimate, gain: Estimate | None, *, tolerance: float, first_margin: float
) -> Verdict:
    """The new RM on the held-out groups (each group one unit: the share of its pairs ordered
    right). Against the promoted RM on the very same groups, the lower bound of the gain
    (new minus promoted, per group) must reach ``-tolerance``: not worse by more than the
    tolerance, with confidence 1 - alpha. The first RM (``gain`` None): the lower bound of
    its accuracy must reach chance plus ``first_margin``."""
    if gain is None:
        floor = 0.5 + first_margin
        if accuracy.lower >= floor - _ROUNDING:
            return Verdict(True)
        return Verdict(
            False,
            [
                f"held-out accuracy {accuracy.value:.3f}: its {accuracy.confidence} lower bound "
                f"{accuracy.lower:.3f} < {floor:.3f} (chance + margin)"
            ],
        )
    if gain.lower >= -tolerance - _ROUNDING:
        return Verdict(True)
    return Verdict(
        False,
        [
            f"held-out accuracy {accuracy.value:.3f}, {gain.value:+.3f} against the promoted RM: "
            f"the gain's {gain.confidence} lower bound {gain.lower:+.3f} < -{tolerance}"
        ],
    )


@dataclass(frozen=True)
class PolicyLimits:
    min_win_rate: float
    max_kl: float
    max_tax_perplexity_ratio: float
    min_end_of_turn_ratio: float
    min_length_ratio: float
    min_distinct_ratio: float
    # A sampled KL estimate below this is a measurement bug (tokenisation, wrong reference).
    min_kl: float = -0.5


def policy_gate(
    win_rate: Estimate,
    kl: float,
    tax_perplexity_ratio: float,
    candidate: AnswerStats,
    reference: AnswerStats,
    limits: PolicyLimits,
) -> Verdict:
    """The candidate against the promoted policy (its win rate) and against the fixed
    reference policy (KL, the alignment tax on text no stage trains on, and its answers'
    statistics): measured against the reference, an allowance does not compound from one
    promotion to the next."""
    checks = [
        (
            win_rate.lower > limits.min_win_rate,
            # Above, not at: per-prompt verdicts are few values, and a bound exactly at 0.5
            # is a frequent tie with the promoted policy, not evidence for the candidate.
            f"win rate {win_rate.value:.3f}: its {win_rate.confidence} lower bound "
            f"{win_rate.lower:.3f} is not above {limits.min_win_rate}",
        ),
        (kl <= limits.max_kl, f"KL to the reference {kl:.2f} > {limits.max_kl} nats"),
        (kl >= limits.min_kl, f"negative mean KL {kl:.2f}: the measurement is broken"),
        (
            tax_perplexity_ratio <= limits.max_tax_perplexity_ratio,
            f"perplexity on untrained text x{tax_perplexity_ratio:.3f} of the reference's > "
            f"x{limits.max_tax_perplexity_ratio}",
        ),
        (
            candidate.end_of_turn_rate >= limits.min_end_of_turn_ratio * reference.end_of_turn_rate,
            f"end-of-turn rate {candidate.end_of_turn_rate:.2f} collapsed (reference: "
            f"{reference.end_of_turn_rate:.2f})",
        ),
        (
            candidate.mean_length >= limits.min_length_ratio * reference.mean_length,
            f"mean answer length {candidate.mean_length:.1f} collapsed (reference: "
            f"{reference.mean_length:.1f})",
        ),
        (
            candidate.distinct_rate >= limits.min_distinct_ratio * reference.distinct_rate,
            f"distinct answers {candidate.distinct_rate:.2f} collapsed (reference: "
            f"{reference.distinct_rate:.2f})",
        ),
    ]
    reasons = [why for ok, why in checks if not ok]
    return Verdict(not reasons, reasons)
