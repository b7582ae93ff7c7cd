"""Turning feedback into comparisons: which answer was preferred to which.

Pure functions over response ids, so the rules can be read (and tested) apart from storage:

- A **ranking** orders all K candidates of one prompt, best first, in tiers; answers in one
  tier are tied. It gives every pair from different tiers: C(K,2) pairs without ties, kept
  together as one group (one batch element of the reward model's K-wise loss).
- **Thumbs** from one rater on answers to the same prompt: every answer they thumbed up is
  preferred to every answer they thumbed down. Thumbs from different raters are never paired:
  a comparison is one person's judgement.
- A **pairwise** vote gives one pair, or none for "tie" and "both bad" (the event is kept, but
  the reward model loss has nothing to learn from it, as the paper drops ties).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

PairwiseOutcome = str  # "a", "b", "tie" or "both_bad"
PAIRWISE_OUTCOMES = ("a", "b", "tie", "both_bad")


@dataclass(frozen=True)
class Pairs:
    """Candidates (response ids, in candidate order) and (better, worse) index pairs."""

    candidates: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]


def _ordered(ids: Sequence[str], candidate_order: Mapping[str, int]) -> tuple[str, ...]:
    return tuple(sorted(ids, key=candidate_order.__getitem__))


def from_ranking(tiers: Sequence[Sequence[str]], candidate_order: Mapping[str, int]) -> Pairs:
    """All pairs of a tiered ranking (best tier first)."""
    candidates = _ordered([r for tier in tiers for r in tier], candidate_order)
    position = {r: i for i, r in enumerate(candidates)}
    pairs = [
        (position[better], position[worse])
        for upper, lower in combinations(range(len(tiers)), 2)
        for better in tiers[upper]
        for worse in tiers[lower]
    ]
    return Pairs(candidates, tuple(sorted(pairs)))


def from_thumbs(thumbs: Mapping[str, int], candidate_order: Mapping[str, int]) -> Pairs:
    """Pairs from one rater's thumbs (+1 / -1 per response id) within one candidate group."""
    candidates = _ordered(list(thumbs), candidate_order)
    ups = [i for i, r in enumerate(candidates) if thumbs[r] > 0]
    downs = [i for i, r in enumerate(candidates) if thumbs[r] < 0]
    return Pairs(candidates, tuple((u, d) for u in ups for d in downs))


def from_pairwise(
    response_a: str, response_b: str, outcome: PairwiseOutcome, candidate_order: Mapping[str, int]
) -> Pairs:
    """The one pair of an A/B vote; no pair for a tie or when both are bad."""
    if outcome not in PAIRWISE_OUTCOMES:
        raise ValueError(f"unknown pairwise outcome {outcome!r}")
    candidates = _ordered([response_a, response_b], candidate_order)
    if outcome not in ("a", "b"):
        return Pairs(candidates, ())
    better, worse = (response_a, response_b) if outcome == "a" else (response_b, response_a)
    return Pairs(candidates, ((candidates.index(better), candidates.index(worse)),))
