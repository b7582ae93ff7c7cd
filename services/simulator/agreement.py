"""How often labelers agree: the paper's inter-annotator agreement (about 73%), measured on
the same answer pairs for every pair of personas."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from services.simulator.personas import Persona


def _choices(
    personas: Sequence[Persona], items: Sequence[tuple[str, str, str]], rng: random.Random
) -> dict[str, list[bool]]:
    return {p.name: [p.prefers_first(q, a, b, rng) for q, a, b in items] for p in personas}


def _agree(x: list[bool], y: list[bool]) -> float:
    return sum(i == j for i, j in zip(x, y, strict=True)) / len(x)


def agreement(
    personas: Sequence[Persona],
    items: Sequence[tuple[str, str, str]],
    seed: int = 0,
) -> dict[tuple[str, str], float]:
    """For each pair of personas, the share of (prompt, answer a, answer b) items on which
    their noisy choices agree."""
    choices = _choices(personas, items, random.Random(seed))
    return {
        (x.name, y.name): _agree(choices[x.name], choices[y.name])
        for x, y in itertools.combinations(personas, 2)
    }


def mean_agreement(table: dict[tuple[str, str], float]) -> float:
    return sum(table.values()) / len(table)


@dataclass(frozen=True)
class PanelAgreement:
    among_trainers: float  # the training personas with each other (the paper: ~73%)
    trainers_with_judges: float  # training personas with the held-out judges (paper: ~77%)
    spammer_with_judges: float | None  # the random voter with the judges (chance: 50%)


def panel_agreement(
    trainers: Sequence[Persona],
    judges: Sequence[Persona],
    spammer: Persona | None,
    items: Sequence[tuple[str, str, str]],
    seed: int = 0,
) -> PanelAgreement:
    """Mean pairwise agreement within the training personas, between them and the judges,
    and between the spammer (if any) and the judges, all on the same answer pairs."""
    everyone = [*trainers, *judges, *([spammer] if spammer else [])]
    choices = _choices(everyone, items, random.Random(seed))

    def mean(pairs: list[tuple[Persona, Persona]]) -> float:
        return sum(_agree(choices[x.name], choices[y.name]) for x, y in pairs) / len(pairs)

    return PanelAgreement(
        mean(list(itertools.combinations(trainers, 2))),
        mean([(t, j) for t in trainers for j in judges]),
        mean([(spammer, j) for j in judges]) if spammer else None,
    )
