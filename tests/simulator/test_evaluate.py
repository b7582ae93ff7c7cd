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


def test_several_answers_a_prompt_are_all_judged_and_still_resampled_by_prompt():
    prompts = [p.text for p in held_out_prompts()][:10]
    good = [f"Here is a clear answer to your request: {p}." for p in prompts]
    bad = ["Sorry, I can't. Sorry, I can't. Sorry, I can't" for _ in prompts]
    # Half of each prompt's candidate answers are good: a preference of about 3/4.
    mixed = [[g, bad[i]] for i, g in enumerate(good)]
    base = [[bad[i], g] for i, g in enumerate(good)]

    seen = judged_preference(JUDGES, prompts, mixed, [[b, b] for b in bad])
    assert seen.judgements == 2 * 3 * len(prompts) and seen.prompts == len(prompts)
    assert 0.6 < seen.rate < 0.9
    # Equal sets, paired sample by sample (a good answer against a bad one and back).
    even = judged_preference(JUDGES, prompts, mixed, base)
    assert even.low <= 0.5 <= even.high
    try:
        judged_preference(JUDGES, prompts, mixed, bad)
    except ValueError as error:
        assert "as many answers of each policy" in str(error)
    else:
        raise AssertionError("a prompt with 2 answers of one policy and 1 of the other")
