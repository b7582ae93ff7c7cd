"""The learning-rate schedule every trainer here uses: linear warm-up, then cosine decay.

The paper decays its RM's learning rate with a cosine to 10% of the peak; SFT
and PPO use the same shape so that one function, tested once, serves all.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_steps_for(warmup_ratio: float, total_steps: int) -> int:
    """Steps of warm-up for a ratio of the run: at least one when the ratio is positive."""
    if warmup_ratio <= 0:
        return 0
    return min(total_steps, max(1, round(total_steps * warmup_ratio)))


def cosine_with_warmup(
    total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> Callable[[int], float]:
    """LR multiplier for optimizer step ``step`` (0-based), for ``LambdaLR``.

    Linear warm-up so that the last warm-up step uses exactly the peak lr, then a
    cosine down to ``min_lr_ratio`` reached exactly at the last step.
    """
    peak = max(warmup_steps - 1, 0)
    decay_steps = max(1, total_steps - 1 - peak)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - peak) / decay_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier
