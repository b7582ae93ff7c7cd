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

The canary's decision (:func:`canary_decision`) reads the same two sequences, of the canary and
of the promoted version over the same period: roll back when the canary's whole interval lies
below the promoted one's (minus the rollback margin), promote early when it lies above the
promoted one's minus the canary margin (not worse by more than that), otherwise wait, up to a
longest wait. Each of the two early calls is wrong with probability at most alpha however
often the watch looks; at the longest wait a canary not shown worse is promoted (the gates
already showed it better offline) unless the operator chose to roll it back instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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

    def describe(self, other: str = "parent") -> str:
        (v_low, v_high), (p_low, p_high) = self.version, self.parent
        return f"thumbs-up in [{v_low:.3f}, {v_high:.3f}] vs {other}'s [{p_low:.3f}, {p_high:.3f}]"

    def shown_worse(self, margin: float) -> bool:
        """The version's whole interval below the other's minus ``margin``."""
        return self.version[1] < self.parent[0] - margin

    def shown_not_worse(self, margin: float) -> bool:
        """The version's whole interval above the other's minus ``margin``."""
        return self.version[0] > self.parent[1] - margin


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


@dataclass(frozen=True)
class RollbackVerdict(Verdict):
    """``passed``: roll back; ``seen``: the two sequences it decided on."""

    seen: RateComparison | None = None


def rollback_due(
    version_up: int,
    version_down: int,
    parent_up: int,
    parent_down: int,
    *,
    alpha: float,
    margin: float,
    planned_votes: int,
) -> RollbackVerdict:
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
    if seen.shown_worse(margin):
        return RollbackVerdict(True, [f"worse than its parent: {seen.describe()} ({votes})"], seen)
    return RollbackVerdict(False, [f"not shown worse: {seen.describe()} ({votes})"], seen)


CanaryAction = Literal["promote", "roll_back", "wait"]


@dataclass(frozen=True)
class CanaryDecision:
    action: CanaryAction
    reason: str
    seen: RateComparison  # version: the canary, parent: the promoted version


def canary_decision(
    canary_up: int,
    canary_down: int,
    promoted_up: int,
    promoted_down: int,
    *,
    waited_s: float,
    alpha: float,
    rollback_margin: float,
    promote_margin: float,
    planned_votes: int,
    max_wait_s: float,
    at_longest_wait: CanaryAction,
) -> CanaryDecision:
    """What to do with a canary given both versions' thumbs since it started (module
    docstring). Asked as often as one likes: a canary as good as the promoted version is rolled
    back with probability at most ``alpha``, and one worse by more than ``promote_margin`` is
    promoted early with probability at most ``alpha``."""
    seen = compare_rates(
        canary_up,
        canary_up + canary_down,
        promoted_up,
        promoted_up + promoted_down,
        alpha=alpha,
        planned_votes=planned_votes,
    )
    shown = seen.describe("the promoted version")
    votes = f"{canary_up + canary_down} votes, promoted {promoted_up + promoted_down}"
    if seen.shown_worse(rollback_margin):
        return CanaryDecision(
            "roll_back", f"worse than the promoted version: {shown} ({votes})", seen
        )
    if seen.shown_not_worse(promote_margin):
        return CanaryDecision(
            "promote", f"not worse by more than {promote_margin}: {shown} ({votes})", seen
        )
    if waited_s >= max_wait_s:
        return CanaryDecision(
            at_longest_wait,
            f"undecided after the longest wait ({max_wait_s:.0f} s): {shown} ({votes})",
            seen,
        )
    return CanaryDecision(
        "wait", f"undecided: {shown} ({votes}); waited {waited_s:.0f} of {max_wait_s:.0f} s", seen
    )
