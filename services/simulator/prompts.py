"""The project's own prompt set (data/prompts.tsv: category, prompt) split into training and
held-out prompts, and a general-text set for the alignment tax (data/general_text.txt, not
used by PPO-ptx, so perplexity on it measures what training did to general text)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Prompt:
    category: str
    text: str

    @property
    def held_out(self) -> bool:
        """About one prompt in four, chosen by a hash of its text (the same in every run)."""
        return hashlib.sha256(self.text.encode()).digest()[0] % 4 == 0


def load_prompts() -> list[Prompt]:
    rows = (line.split("\t", 1) for line in (DATA / "prompts.tsv").read_text().splitlines())
    return [Prompt(category, text) for category, text in rows]


def training_prompts() -> list[Prompt]:
    return [p for p in load_prompts() if not p.held_out]


def held_out_prompts() -> list[Prompt]:
    return [p for p in load_prompts() if p.held_out]


def general_texts() -> list[str]:
    text = (DATA / "general_text.txt").read_text()
    return [p.strip() for p in text.split("\n\n") if p.strip()]
