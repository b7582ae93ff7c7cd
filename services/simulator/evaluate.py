"""The held-out personas as judges: how often they prefer one policy's answers to another's
on the held-out prompts, with a 95% confidence interval (the paper's headline measure)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from services.rlhf.evaluation import win_rate_with_interval
from services.simulator.personas import Persona


@dataclass(frozen=True)
class Preference:
    rate: float  # share of judgements preferring the new answers (ties impossible: BT choice)
    low: float
    high: float
    prompts: int
    judgements: int


def judged_preference(
    judges: Sequence[Persona],
    prompts: Sequence[str],
    new_answers: Sequence[str],
    base_answers: Sequence[str],
    seed: int = 0,
    samples: int = 2000,
) -> Preference:
    """Every judge compares the two answers to every prompt (in a random order, as a person
    sees two answers side by side). The interval resamples prompts, not judgements: the
    judges of one prompt see the same two answers, so their verdicts are not independent."""
    if not (len(prompts) == len(new_answers) == len(base_answers)) or not prompts:
        raise ValueError("one answer of each policy per prompt, and at least one prompt")
    rng = random.Random(seed)
    per_prompt = []
    for prompt, new, base in zip(prompts, new_answers, base_answers, strict=True):
        verdicts = []
        for judge in judges:
            if rng.random() < 0.5:
                verdicts.append(1.0 if judge.prefers_first(prompt, new, base, rng) else 0.0)
            else:
                verdicts.append(0.0 if judge.prefers_first(prompt, base, new, rng) else 1.0)
        per_prompt.append(sum(verdicts) / len(verdicts))
    rate, low, high = win_rate_with_interval(per_prompt, samples, seed=seed, level=0.95)
    return Preference(rate, low, high, len(prompts), len(prompts) * len(judges))
