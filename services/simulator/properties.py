"""Checkable properties of an answer to a prompt, each a score in [0, 1].

A persona's hidden preference is a weighted sum of these (personas.py). They are deliberately
simple, readable rules a person would also apply: did the answer address what was asked,
is it as long as the request wants, does it use a list when steps were asked for, does it
avoid needless apologies and refusals, does it repeat itself, does it finish.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_WORD = re.compile(r"[a-z']+")
# Words that say nothing about the topic of a request.
_STOPWORD_TEXT = """
a an the and or but of to in on for with about from by at as is are was were be been it its
this that these those i you he she we they me my your our their what which who how why when
where can could would should will do does did please tell give write make some any us
explain describe
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_DETAIL_WORDS = ("in detail", "detailed", "thorough", "explain why", "step by step", "essay")
_STEP_WORDS = ("steps", "how do i", "how to", "list", "ways to", "tips", "ideas")
_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.MULTILINE)
_APOLOGIES = ("sorry", "i apologize", "i apologise", "my apologies", "as an ai")
_REFUSALS = ("i can't", "i cannot", "i'm unable", "i am unable", "i won't", "i will not")
_RUDE = ("stupid", "idiot", "dumb", "shut up", "whatever")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    return {w for w in _words(text) if w not in _STOPWORDS and len(w) > 2}


def on_topic(prompt: str, answer: str) -> float:
    """Share of the prompt's content words the answer takes up (a proxy for answering what
    was asked); a prompt with no content words counts as answered."""
    asked = content_words(prompt)
    if not asked:
        return 1.0
    return len(asked & content_words(answer)) / len(asked)


def wants_detail(prompt: str) -> bool:
    lowered = prompt.lower()
    return any(w in lowered for w in _DETAIL_WORDS)


def wants_steps(prompt: str) -> bool:
    lowered = prompt.lower()
    return any(w in lowered for w in _STEP_WORDS)


def right_length(prompt: str, answer: str) -> float:
    """1 inside the length the request wants (10-80 words, or 60-250 when detail is asked),
    falling off linearly to 0 at half the floor and twice the ceiling."""
    n = len(_words(answer))
    low, high = (60, 250) if wants_detail(prompt) else (10, 80)
    if n < low:
        return max(0.0, (n - low / 2) / (low / 2))
    if n > high:
        return max(0.0, 1 - (n - high) / high)
    return 1.0


def list_when_steps(prompt: str, answer: str) -> float:
    """When steps, tips or a list are asked for: 1 with at least two list lines, else 0.
    Otherwise 1 (a list is neither needed nor penalised)."""
    if not wants_steps(prompt):
        return 1.0
    return 1.0 if len(_LIST_LINE.findall(answer)) >= 2 else 0.0


def _absent(phrases: tuple[str, ...]) -> Callable[[str, str], float]:
    def check(_prompt: str, answer: str) -> float:
        lowered = answer.lower()
        return 0.0 if any(p in lowered for p in phrases) else 1.0

    return check


no_apology = _absent(_APOLOGIES)
no_refusal = _absent(_REFUSALS)
polite = _absent(_RUDE)


def no_repetition(_prompt: str, answer: str) -> float:
    """Share of distinct word trigrams (1 for an answer too short to repeat one)."""
    words = _words(answer)
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(set(trigrams)) / len(trigrams) if trigrams else 1.0


def finished(_prompt: str, answer: str) -> float:
    """Ends like a finished sentence (an answer cut at the length limit does not)."""
    return 1.0 if answer.rstrip().endswith((".", "!", "?", ")", '"', "'")) else 0.0


PROPERTIES: dict[str, Callable[[str, str], float]] = {
    "on_topic": on_topic,
    "right_length": right_length,
    "list_when_steps": list_when_steps,
    "no_apology": no_apology,
    "no_refusal": no_refusal,
    "no_repetition": no_repetition,
    "polite": polite,
    "finished": finished,
}


def measure(prompt: str, answer: str) -> dict[str, float]:
    """Every property of ``answer`` to ``prompt``."""
    return {name: check(prompt, answer) for name, check in PROPERTIES.items()}
