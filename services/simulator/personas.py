"""Personas: simulated labelers with hidden preferences and human-like noise.

A persona's utility for an answer is the weighted sum of its properties (properties.py) with
the persona's own weights; its choices follow the Bradley-Terry model on those utilities with
a persona-specific temperature, so personas agree with each other only partly, as real
labelers do (the paper's agreed about 73% of the time). Rankings are Plackett-Luce samples
(Gumbel noise added to utility / temperature, then sorted), the K-wise generalisation of the
same model. A spammer ignores the answers.

Held-out personas never give training feedback: they only judge, as the paper's held-out
labelers did.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.simulator.properties import measure


@dataclass(frozen=True)
class Persona:
    name: str
    weights: dict[str, float]
    # Bradley-Terry temperature: the utility difference at which a choice is 73% sure.
    temperature: float = 0.3
    held_out: bool = False
    spammer: bool = False
    # How this persona gives feedback on a request's candidates (shares, summing to 1).
    behaviour: dict[str, float] = field(
        default_factory=lambda: {"ranking": 0.7, "thumb": 0.15, "pairwise": 0.15}
    )
    # Chance that a vote is sent twice with the same client_event_id (a client retry).
    retry_rate: float = 0.05

    def utility(self, prompt: str, answer: str) -> float:
        props = measure(prompt, answer)
        return sum(weight * props[name] for name, weight in self.weights.items())

    def prefers_first(self, prompt: str, first: str, second: str, rng: random.Random) -> bool:
        """One noisy pairwise choice."""
        if self.spammer:
            return rng.random() < 0.5
        gap = (self.utility(prompt, first) - self.utility(prompt, second)) / self.temperature
        return rng.random() < 1 / (1 + math.exp(-gap))

    def rank(self, prompt: str, answers: Sequence[str], rng: random.Random) -> list[int]:
        """Indices of ``answers``, best first (a Plackett-Luce sample)."""
        if self.spammer:
            order = list(range(len(answers)))
            rng.shuffle(order)
            return order
        noisy = [
            self.utility(prompt, a) / self.temperature - math.log(-math.log(rng.random() or 1e-12))
            for a in answers
        ]
        return sorted(range(len(answers)), key=lambda i: -noisy[i])

    def thumb(self, prompt: str, answer: str, rng: random.Random) -> int:
        """+1 or -1: an answer above the persona's bar (its utility of a decent answer)."""
        if self.spammer:
            return rng.choice((1, -1))
        bar = 0.75 * sum(self.weights.values())
        gap = (self.utility(prompt, answer) - bar) / self.temperature
        return 1 if rng.random() < 1 / (1 + math.exp(-gap)) else -1


def default_panel() -> list[Persona]:
    """Six training labelers, three held-out judges and one spammer. Every persona values the
    basics; each stresses different things, so they agree only partly."""
    base = {
        "on_topic": 2.0,
        "right_length": 1.0,
        "list_when_steps": 0.8,
        "no_apology": 0.6,
        "no_refusal": 1.0,
        "no_repetition": 1.2,
        "polite": 0.5,
        "finished": 0.8,
    }

    def persona(name: str, temperature: float, held_out: bool = False, **stress: float):
        return Persona(name, {**base, **stress}, temperature, held_out)

    return [
        persona("ada", 0.25, right_length=2.0),  # wants it short and to the point
        persona("ben", 0.35, list_when_steps=2.0),  # likes structure
        persona("chloe", 0.3, no_repetition=2.5),  # hates rambling
        persona("dev", 0.4, on_topic=3.0),  # answer the question, nothing else matters much
        persona("eli", 0.3, no_apology=1.5, no_refusal=2.0),  # no hedging
        persona("fay", 0.45, finished=2.0, polite=1.0),  # tidy and kind
        persona("judge-1", 0.3, held_out=True),
        persona("judge-2", 0.35, held_out=True, on_topic=2.5),
        persona("judge-3", 0.3, held_out=True, right_length=1.5, no_repetition=1.5),
        Persona("spammer", base, spammer=True, behaviour={"ranking": 1.0}),
    ]
