"""The optimizer and learning-rate schedule every trainer here uses.

AdamW with the fused kernel where torch has one for the parameters' device (CPU
and CUDA): one kernel per step instead of a loop of small ones, measured 0.1 s
against 0.3-0.6 s a step for the 135M model on 2 CPU cores. The schedule is a
linear warm-up, then a cosine decay: the paper decays its RM's learning rate to
10% of the peak; SFT and PPO use the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float = 0.0,
) -> torch.optim.AdamW:
    """AdamW (plain Adam when ``weight_decay`` is 0), fused when the device allows."""
    params = [p for p in params if p.requires_grad]
    device = params[0].device.type if params else "cpu"
    return torch.optim.AdamW(
        params,
        lr=lr,
        betas=tuple(betas),
        weight_decay=weight_decay,
        fused=device in ("cpu", "cuda"),
    )


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


def adamw_with_schedule(
    params: Iterable[torch.nn.Parameter], config, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its warm-up + cosine schedule, from a config with ``lr``, ``adam_betas``,
    ``weight_decay``, ``warmup_ratio`` and ``min_lr_ratio`` (SFTConfig, RewardConfig)."""
    optimizer = adamw(params, config.lr, config.adam_betas, config.weight_decay)
    warmup = warmup_steps_for(config.warmup_ratio, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps, warmup, config.min_lr_ratio)
    )
    return optimizer, scheduler
