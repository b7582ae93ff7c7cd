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
    new_answers: Sequence[str | Sequence[str]],
    base_answers: Sequence[str | Sequence[str]],
    seed: int = 0,
    samples: int = 2000,
) -> Preference:
    """Every judge compares the two policies' answers to every prompt (in a random order, as a
    person sees two answers side by side). A prompt may have several answers of each policy
    (sampled with the same seeds for both): the judges compare them pairwise, sample by
    sample, and the prompt's share is the mean over all. The interval resamples prompts, not
    judgements: the judgements of one prompt share its answers, so they are not independent."""
    new_sets, base_sets = _answer_sets(new_answers), _answer_sets(base_answers)
    if not (len(prompts) == len(new_sets) == len(base_sets)) or not prompts:
        raise ValueError("answers of each policy for every prompt, and at least one prompt")
    if any(len(n) != len(b) or not n for n, b in zip(new_sets, base_sets, strict=True)):
        raise ValueError("as many answers of each policy for a prompt, at least one")
    rng = random.Random(seed)
    per_prompt, judgements = [], 0
    for prompt, news, bases in zip(prompts, new_sets, base_sets, strict=True):
        verdicts = []
        for new, base in zip(news, bases, strict=True):
            for judge in judges:
                if rng.random() < 0.5:
                    verdicts.append(1.0 if judge.prefers_first(prompt, new, base, rng) else 0.0)
                else:
                    verdicts.append(0.0 if judge.prefers_first(prompt, base, new, rng) else 1.0)
        per_prompt.append(sum(verdicts) / len(verdicts))
        judgements += len(verdicts)
    rate, low, high = win_rate_with_interval(per_prompt, samples, seed=seed, level=0.95)
    return Preference(rate, low, high, len(prompts), judgements)


def _answer_sets(answers: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """One list of answers per prompt (a single answer is a list of one)."""
    return [[a] if isinstance(a, str) else list(a) for a in answers]
