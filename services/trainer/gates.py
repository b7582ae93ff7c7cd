"""The gates: pure decisions on measured numbers, so each rule is tested on its own.

The stages measure (held-out accuracy, win rate, KL, perplexity, answer statistics); these
functions decide and say why. A candidate passes only if every check passes.
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


def reward_model_gate(
    accuracy: float, promoted_accuracy: float | None, *, tolerance: float, first_margin: float
) -> Verdict:
    """The new RM's held-out accuracy against the promoted RM's on the same held-out set
    (minus ``tolerance``), or, for the first RM, against chance plus ``first_margin``."""
    if promoted_accuracy is None:
        floor = 0.5 + first_margin
        if accuracy >= floor - _ROUNDING:
            return Verdict(True)
        return Verdict(False, [f"held-out accuracy {accuracy:.3f} < {floor:.3f} (chance + margin)"])
    floor = promoted_accuracy - tolerance
    if accuracy >= floor - _ROUNDING:
        return Verdict(True)
    return Verdict(
        False,
        [
            f"held-out accuracy {accuracy:.3f} < {floor:.3f} (the promoted RM's "
            f"{promoted_accuracy:.3f} minus {tolerance})"
        ],
    )


@dataclass(frozen=True)
class AnswerStats:
    """What the sanity checks compare between the candidate and the promoted policy."""

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


@dataclass(frozen=True)
class PolicyLimits:
    min_win_rate: float
    max_kl: float
    max_ptx_perplexity_ratio: float
    min_end_of_turn_ratio: float
    min_length_ratio: float
    min_distinct_ratio: float
    # A sampled KL estimate below this is a measurement bug (tokenisation, wrong reference).
    min_kl: float = -0.5


def policy_gate(
    win_rate: float,
    kl: float,
    ptx_perplexity_ratio: float,
    candidate: AnswerStats,
    promoted: AnswerStats,
    limits: PolicyLimits,
) -> Verdict:
    checks = [
        (win_rate >= limits.min_win_rate, f"win rate {win_rate:.3f} < {limits.min_win_rate}"),
        (kl <= limits.max_kl, f"KL to the reference {kl:.2f} > {limits.max_kl} nats"),
        (kl >= limits.min_kl, f"negative mean KL {kl:.2f}: the measurement is broken"),
        (
            ptx_perplexity_ratio <= limits.max_ptx_perplexity_ratio,
            f"ptx perplexity x{ptx_perplexity_ratio:.3f} > x{limits.max_ptx_perplexity_ratio}",
        ),
        (
            candidate.end_of_turn_rate >= limits.min_end_of_turn_ratio * promoted.end_of_turn_rate,
            f"end-of-turn rate {candidate.end_of_turn_rate:.2f} collapsed (promoted: "
            f"{promoted.end_of_turn_rate:.2f})",
        ),
        (
            candidate.mean_length >= limits.min_length_ratio * promoted.mean_length,
            f"mean answer length {candidate.mean_length:.1f} collapsed (promoted: "
            f"{promoted.mean_length:.1f})",
        ),
        (
            candidate.distinct_rate >= limits.min_distinct_ratio * promoted.distinct_rate,
            f"distinct answers {candidate.distinct_rate:.2f} collapsed (promoted: "
            f"{promoted.distinct_rate:.2f})",
        ),
    ]
    reasons = [why for ok, why in checks if not ok]
    return Verdict(not reasons, reasons)


def rollback_due(
    version_up: int,
    version_down: int,
    parent_up: int,
    parent_down: int,
    *,
    margin: float,
    min_votes: int,
) -> Verdict:
    """Whether a promoted version's live thumbs-up ratio fell ``margin`` below its parent's,
    both with at least ``min_votes`` thumbs. ``passed`` means: roll back."""
    votes, parent_votes = version_up + version_down, parent_up + parent_down
    if votes < min_votes or parent_votes < min_votes:
        return Verdict(False, [f"too few votes ({votes}, parent {parent_votes}; need {min_votes})"])
    ratio, parent_ratio = version_up / votes, parent_up / parent_votes
    if ratio < parent_ratio - margin:
        return Verdict(
            True,
            [f"thumbs-up {ratio:.3f} < parent's {parent_ratio:.3f} - {margin} ({votes} votes)"],
        )
    return Verdict(False, [f"thumbs-up {ratio:.3f} vs parent's {parent_ratio:.3f}: within margin"])
