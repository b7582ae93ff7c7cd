"""How often labelers agree: the paper's inter-annotator agreement (about 73%), measured on
the same answer pairs for every pair of personas."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from services.simulator.personas import Persona


def agreement(
    personas: Sequence[Persona],
    items: Sequence[tuple[str, str, str]],
    seed: int = 0,
) -> dict[tuple[str, str], float]:
    """For each pair of personas, the share of (prompt, answer a, answer b) items on which
    their noisy choices agree."""
    rng = random.Random(seed)
    choices = {
        p.name: [p.prefers_first(prompt, a, b, rng) for prompt, a, b in items] for p in personas
    }
    return {
        (x.name, y.name): sum(i == j for i, j in zip(choices[x.name], choices[y.name], strict=True))
        / len(items)
        for x, y in itertools.combinations(personas, 2)
    }


def mean_agreement(table: dict[tuple[str, str], float]) -> float:
    return sum(table.values()) / len(table)
