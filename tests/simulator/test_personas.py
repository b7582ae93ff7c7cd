"""Personas choose like noisy people with hidden preferences, and agree only partly."""

from __future__ import annotations

import random

from services.simulator.agreement import agreement, mean_agreement, panel_agreement
from services.simulator.personas import default_panel
from services.simulator.prompts import held_out_prompts, load_prompts, training_prompts

PROMPT = "What steps should I take to start running regularly?"
GOOD = (
    "Start slowly:\n1. Get comfortable shoes.\n2. Run ten minutes, three times a week.\n"
    "3. Add a few minutes every week."
)
BAD = "Sorry, I can't help with that. Sorry, I can't help with that. Sorry"


def panel():
    return {p.name: p for p in default_panel()}


def test_a_clearly_better_answer_is_preferred_most_of_the_time_but_not_always():
    ada, rng = panel()["ada"], random.Random(0)
    wins = sum(ada.prefers_first(PROMPT, GOOD, BAD, rng) for _ in range(1000))
    assert 900 < wins <= 1000
    near = GOOD.replace("3. Add a few minutes every week.", "Add a few minutes every week.")
    close = sum(ada.prefers_first(PROMPT, GOOD, near, rng) for _ in range(1000))
    assert 300 < close < 900  # a small difference is a noisy call


def test_rankings_put_the_better_answer_first_and_the_spammer_is_random():
    personas, rng = panel(), random.Random(1)
    answers = [BAD, GOOD]
    firsts = [personas["ben"].rank(PROMPT, answers, rng)[0] for _ in range(500)]
    assert firsts.count(1) > 450
    spam = [personas["spammer"].rank(PROMPT, answers, rng)[0] for _ in range(1000)]
    assert 400 < spam.count(1) < 600


def test_thumbs_follow_the_persona_s_bar():
    fay, rng = panel()["fay"], random.Random(2)
    ups = sum(fay.thumb(PROMPT, GOOD, rng) == 1 for _ in range(500))
    downs = sum(fay.thumb(PROMPT, BAD, rng) == -1 for _ in range(500))
    assert ups > 400 and downs > 400


def test_the_panel_has_training_personas_held_out_judges_and_a_spammer():
    personas = default_panel()
    assert sum(p.held_out for p in personas) == 3
    assert sum(p.spammer for p in personas) == 1
    assert len({p.name for p in personas}) == len(personas)


def mixed_quality_items() -> list[tuple[str, str, str]]:
    """(prompt, answer a, answer b): plausible answers of varying quality."""
    rng = random.Random(3)
    pieces = [
        "Here are some ideas.",
        "Sorry, I can't be sure.",
        "1. Start small.\n2. Keep going.",
        "It depends on many things and it depends on many things.",
        "The answer covers the question asked with a clear example.",
        "Yes",
    ]
    items = []
    for prompt in load_prompts():
        a = " ".join(rng.sample(pieces, 2)) + " " + prompt.text
        b = " ".join(rng.sample(pieces, 2))
        items.append((prompt.text, a, b))
    return items


def test_personas_agree_only_partly_like_the_paper_s_labelers():
    """The labelers (spammer aside) agree well above chance and well below unanimity (the
    paper: about 73%)."""
    items = mixed_quality_items()
    people = [p for p in default_panel() if not p.spammer]
    table = agreement(people, items)
    mean = mean_agreement(table)
    assert 0.6 < mean < 0.95, table
    spammer = next(p for p in default_panel() if p.spammer)
    with_spammer = agreement([people[0], spammer], items)
    assert 0.35 < mean_agreement(with_spammer) < 0.65


def test_the_panel_s_agreement_separates_trainers_judges_and_the_spammer():
    panel = default_panel()
    trainers = [p for p in panel if not p.held_out and not p.spammer]
    judges = [p for p in panel if p.held_out]
    spammer = next(p for p in panel if p.spammer)
    measured = panel_agreement(trainers, judges, spammer, mixed_quality_items())
    assert 0.6 < measured.among_trainers < 0.95
    assert 0.6 < measured.trainers_with_judges < 0.95
    assert 0.35 < measured.spammer_with_judges < 0.65
    assert (
        panel_agreement(trainers, judges, None, mixed_quality_items()).spammer_with_judges is None
    )


def test_prompts_split_the_same_way_every_time():
    assert {p.text for p in held_out_prompts()}.isdisjoint({p.text for p in training_prompts()})
    assert len(held_out_prompts()) >= 20
    assert {p.category for p in held_out_prompts()} == {p.category for p in load_prompts()}
