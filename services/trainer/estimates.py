"""A gate's statistic from its per-unit values: the mean and its bootstrap lower bound.

Apart from gates.py (pure decisions, imported by the control worker, which never imports
torch) because the bound is computed by services/rlhf/evaluation.py."""

from __future__ import annotations

from collections.abc import Sequence

from services.rlhf.evaluation import lower_confidence_bound
from services.trainer.gates import Estimate


def mean_estimate(values: Sequence[float], samples: int, alpha: float) -> Estimate:
    """The mean of ``values`` (one per prompt or group) and its one-sided (1 - ``alpha``)
    lower confidence bound from ``samples`` bootstrap resamples of the units."""
    return Estimate(
        sum(values) / len(values), lower_confidence_bound(values, samples, alpha), alpha
    )
