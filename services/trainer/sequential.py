"""Always-valid comparison of two thumbs-up rates: the rollback watch's test.

The watch looks at the votes every few minutes for as long as a version serves, so a test
that is valid for one look (a difference of ratios against a margin) is wrong far more often
than its nominal rate once it is asked again and again. A *confidence sequence* is an
interval that holds the true rate at every number of votes at once: the chance that it ever
misses, however often it is looked at, is at most its alpha.

Each rate's sequence is Robbins' normal mixture for a vote in [0, 1] (1/2-sub-Gaussian): the
mean of ``t`` votes lies within ``radius(t)`` of the true rate for all ``t`` together, with
probability at least 1 - alpha (Ville's inequality on the mixture martingale; Howard et al.,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", 2021). Two sequences at
alpha / 2 each hold together with probability at least 1 - alpha, so "the version's whole
interval lies below the parent's" is, for a version as good as its parent, a false alarm
with probability at most alpha over the whole time it serves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.trainer.gates import Verdict

# A vote is 0 or 1, so it is 1/2-sub-Gaussian: variance proxy 1/4 a vote.
_VOTE_VARIANCE = 0.25


def mixture_precision(planned_votes: int, alpha: float) -> float:
    """The mixture's precision that makes the sequence narrowest near ``planned_votes`` (the
    sequence holds at every count whatever it is; this only says where it is tightest)."""
    log_term = 2 * math.log(1 / alpha)
    return _VOTE_VARIANCE * planned_votes / (log_term + math.log(1 + log_term))


def rate_sequence(up: int, votes: int, alpha: float, planned_votes: int) -> tuple[float, float]:
    """The (1 - ``alpha``) confidence sequence of a thumbs-up rate after ``votes`` votes of
    which ``up`` were up: (low, high), clipped to [0, 1]; (0, 1) before any vote."""
    if votes == 0:
        return 0.0, 1.0
    rho = mixture_precision(planned_votes, alpha)
    spread = rho + _VOTE_VARIANCE * votes
    radius = math.sqrt(2 * spread * (math.log(1 / alpha) + 0.5 * math.log(spread / rho))) / votes
    rate = up / votes
    return max(0.0, rate - radius), min(1.0, rate + radius)


@dataclass(frozen=True)
class RateComparison:
    """The two sequences side by side, for the run store, `train status` and the logs."""

    version: tuple[float, float]
    parent: tuple[float, float]

    def describe(self) -> str:
        (v_low, v_high), (p_low, p_high) = self.version, self.parent
        return f"thumbs-up in [{v_low:.3f}, {v_high:.3f}] vs parent's [{p_low:.3f}, {p_high:.3f}]"


def compare_rates(
    version_up: int,
    version_votes: int,
    parent_up: int,
    parent_votes: int,
    *,
    alpha: float,
    planned_votes: int,
) -> RateComparison:
    return RateComparison(
        rate_sequence(version_up, version_votes, alpha / 2, planned_votes),
        rate_sequence(parent_up, parent_votes, alpha / 2, planned_votes),
    )


def rollback_due(
    version_up: int,
    version_down: int,
    parent_up: int,
    parent_down: int,
    *,
    alpha: float,
    margin: float,
    planned_votes: int,
) -> Verdict:
    """Whether the promoted version is shown worse than its parent by more than ``margin``:
    its whole confidence sequence below the parent's minus the margin. ``passed`` means: roll
    back. Asked as often as one likes, a version as good as its parent is rolled back with
    probability at most ``alpha``."""
    seen = compare_rates(
        version_up,
        version_up + version_down,
        parent_up,
        parent_up + parent_down,
        alpha=alpha,
        planned_votes=planned_votes,
    )
    votes = f"{version_up + version_down} votes, parent {parent_up + parent_down}"
    if seen.version[1] < seen.parent[0] - margin:
        return Verdict(True, [f"worse than its parent: {seen.describe()} ({votes})"])
    return Verdict(False, [f"not shown worse: {seen.describe()} ({votes})"])
