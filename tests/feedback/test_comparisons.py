"""Which pairs each kind of feedback gives (pure functions)."""

from __future__ import annotations

from itertools import combinations

import pytest

from services.feedback import comparisons as derive

ORDER = {"r0": 0, "r1": 1, "r2": 2, "r3": 3}


def named(result: derive.Pairs) -> set[tuple[str, str]]:
    return {(result.candidates[b], result.candidates[w]) for b, w in result.pairs}


def test_a_full_ranking_gives_all_k_choose_2_pairs():
    result = derive.from_ranking([["r2"], ["r0"], ["r3"], ["r1"]], ORDER)
    assert result.candidates == ("r0", "r1", "r2", "r3")
    order = ["r2", "r0", "r3", "r1"]
    assert named(result) == set(combinations(order, 2))
    assert len(result.pairs) == 6


def test_ties_in_a_ranking_give_no_pair_between_them():
    result = derive.from_ranking([["r1", "r3"], ["r0"]], ORDER)
    assert named(result) == {("r1", "r0"), ("r3", "r0")}


def test_thumbs_pair_every_up_with_every_down():
    result = derive.from_thumbs({"r3": 1, "r0": -1, "r1": 1, "r2": -1}, ORDER)
    assert named(result) == {("r1", "r0"), ("r1", "r2"), ("r3", "r0"), ("r3", "r2")}
    assert derive.from_thumbs({"r0": 1, "r1": 1}, ORDER).pairs == ()


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [("a", {("r2", "r1")}), ("b", {("r1", "r2")}), ("tie", set()), ("both_bad", set())],
)
def test_pairwise_outcomes(outcome, expected):
    result = derive.from_pairwise("r2", "r1", outcome, ORDER)
    assert result.candidates == ("r1", "r2")
    assert named(result) == expected


def test_unknown_pairwise_outcome_is_an_error():
    with pytest.raises(ValueError, match="unknown pairwise outcome"):
        derive.from_pairwise("r0", "r1", "maybe", ORDER)
