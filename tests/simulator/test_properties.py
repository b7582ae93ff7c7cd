"""The checkable answer properties behind the personas' preferences."""

from __future__ import annotations

import pytest

from services.simulator.properties import (
    finished,
    list_when_steps,
    measure,
    no_apology,
    no_refusal,
    no_repetition,
    on_topic,
    right_length,
)

STEPS = "What steps should I take to start running regularly?"


def test_an_answer_on_the_topic_scores_higher_than_one_off_it():
    prompt = "Explain why the sky is blue."
    assert on_topic(prompt, "The sky looks blue because air scatters blue light.") == 1.0
    assert on_topic(prompt, "I enjoy cooking pasta on Sundays.") == 0.0


def test_length_wanted_depends_on_the_request():
    short, long = "word " * 30, "word " * 150
    assert right_length("What is the capital of Japan?", short) == 1.0
    assert right_length("What is the capital of Japan?", long) < 1.0
    assert right_length("Explain in detail how vaccines work.", long) == 1.0
    assert right_length("Explain in detail how vaccines work.", short) < 1.0
    assert right_length("What is twelve times eight?", "") == 0.0


def test_a_list_is_wanted_only_when_steps_are_asked_for():
    listed = "Here is a plan:\n1. Buy shoes.\n2. Run ten minutes.\n3. Add a minute a week."
    prose = "Buy shoes, then run a little and add a minute each week."
    assert list_when_steps(STEPS, listed) == 1.0
    assert list_when_steps(STEPS, prose) == 0.0
    assert list_when_steps("Write a haiku about autumn.", prose) == 1.0


@pytest.mark.parametrize(
    ("check", "bad"),
    [
        (no_apology, "Sorry, as an AI I think the answer is four."),
        (no_refusal, "I can't help with that."),
        (finished, "The answer is that the moon reflects"),
    ],
)
def test_apologies_refusals_and_cut_answers_lose(check, bad):
    assert check("Any prompt?", bad) == 0.0
    assert check("Any prompt?", "The answer is four.") == 1.0


def test_repetition_lowers_the_score():
    assert no_repetition("", "one two three four five") == 1.0
    assert no_repetition("", "go go go go go go go go") < 0.2


def test_measure_gives_every_property_in_0_to_1():
    scores = measure(STEPS, "Sorry. Sorry. Sorry.")
    assert set(scores) >= {"on_topic", "right_length", "no_apology", "finished"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
