"""Held-out judges measure a preference with an honest interval."""

from __future__ import annotations

from services.simulator.evaluate import judged_preference
from services.simulator.personas import default_panel
from services.simulator.prompts import held_out_prompts

JUDGES = [p for p in default_panel() if p.held_out]


def test_clearly_better_answers_win_and_equal_ones_do_not():
    prompts = [p.text for p in held_out_prompts()]
    good = [f"Here is a clear answer to your request: {p}." for p in prompts]
    bad = ["Sorry, I can't. Sorry, I can't. Sorry, I can't" for _ in prompts]

    better = judged_preference(JUDGES, prompts, good, bad)
    assert better.rate > 0.9 and better.low > 0.8
    assert better.judgements == 3 * len(prompts)

    same = judged_preference(JUDGES, prompts, good, good)
    assert same.low < 0.5 < same.high  # no preference: the interval holds a coin flip


def test_the_interval_narrows_with_more_prompts():
    prompts = [p.text for p in held_out_prompts()]
    a = [f"{p} A short answer." for p in prompts]
    b = [f"{p} Another short answer!" for p in prompts]
    few = judged_preference(JUDGES, prompts[:6], a[:6], b[:6])
    many = judged_preference(JUDGES, prompts * 4, a * 4, b * 4)
    assert (many.high - many.low) < (few.high - few.low)
