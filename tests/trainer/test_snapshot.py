"""Snapshots exported from the real feedback service: every group with its pairs, held-out
groups chosen by prompt (the same in every export, every group of a prompt on one side),
windows that continue where the last one ended, and files that are written once."""

from __future__ import annotations

import stat
import uuid
from itertools import combinations

import pytest

from services.trainer import snapshot
from services.trainer.snapshot import is_heldout, prompt_key
from services.trainer.stages.policy import prompts
from services.trainer.stages.reward import comparisons
from tests.harness import internal_channel
from tests.trainer.trainer_helpers import record_great_rankings, record_ranking

HELDOUT_PERCENT = 30


@pytest.fixture
def channel(feedback):
    with internal_channel(feedback.target) as channel:
        yield channel


def test_an_export_writes_every_group_with_its_pairs_and_heldout_marks(feedback, channel, tmp_path):
    record_great_rankings(feedback.stub, feedback.http, 12)
    best_first = ["the best answer", "a middling answer", "the worst answer"]
    record_ranking(feedback.stub, feedback.http, "Rank these.", best_first)
    datasets = tmp_path / "datasets"

    taken = snapshot.export(channel, datasets, None, HELDOUT_PERCENT)

    assert taken.path == datasets / f"{taken.id}.jsonl"
    assert stat.S_IMODE(taken.path.stat().st_mode) == 0o600  # prompts and answers: owner only
    groups = list(snapshot.read(taken.path))
    assert taken.groups == len(groups) == 13
    assert taken.pairs == sum(len(g.pairs) for g in groups) == 13 * 3
    assert taken.heldout_groups == sum(g.heldout for g in groups)
    assert len({g.comparison_id for g in groups}) == 13
    for group in groups:
        assert group.heldout == is_heldout(prompt_key(group.prompt), HELDOUT_PERCENT)
        assert len(group.answers) == 3 and len(group.model_versions) == 3
        assert set(group.pairs) == set(combinations(range(3), 2))

    [ranked] = [g for g in groups if g.prompt == [{"role": "user", "content": "Rank these."}]]
    # The pairs say which answer the user preferred, by the answers' texts.
    preferred = {(ranked.answers[better], ranked.answers[worse]) for better, worse in ranked.pairs}
    assert preferred == set(combinations(best_first, 2))
    assert ranked.model_versions == ["v0"] * 3  # what served each answer

    outputs = taken.outputs()
    assert outputs["snapshot_id"] == taken.id and outputs["dataset"] == str(taken.path)
    assert outputs["groups"] == 13 and outputs["pairs"] == 39


def test_the_same_groups_are_held_out_in_every_export(feedback, channel, tmp_path):
    record_great_rankings(feedback.stub, feedback.http, 20)
    # Half held out: 12 of these 20 prompts, so both sides are checked.
    first = snapshot.export(channel, tmp_path, None, 50)
    second = snapshot.export(channel, tmp_path, None, 50)
    assert first.id != second.id
    marks = {g.comparison_id: g.heldout for g in snapshot.read(first.path)}
    assert marks == {g.comparison_id: g.heldout for g in snapshot.read(second.path)}
    assert len(marks) == 20 and len(set(marks.values())) == 2
    assert first.heldout_groups == second.heldout_groups


def test_every_group_of_a_prompt_lies_on_one_side_whoever_rated_it(feedback, channel, tmp_path):
    """Three raters rank answers to each of 12 prompts (each group its own comparison id): all
    three groups of a prompt are held out, or none, though their comparison ids would split."""
    prompts = [f"Shared question {i}?" for i in range(12)]
    for prompt in prompts:
        for rater in range(3):
            record_ranking(feedback.stub, feedback.http, prompt, [f"yes {rater}", f"no {rater}"])

    groups = list(snapshot.read(snapshot.export(channel, tmp_path, None, HELDOUT_PERCENT).path))

    sides: dict[str, set[bool]] = {}
    by_comparison_id: dict[str, set[bool]] = {}
    for group in groups:
        text = group.prompt[0]["content"]
        sides.setdefault(text, set()).add(group.heldout)
        by_comparison_id.setdefault(text, set()).add(
            is_heldout(group.comparison_id, HELDOUT_PERCENT)
        )
    assert len(groups) == 36 and set(sides) == set(prompts)
    assert all(len(side) == 1 for side in sides.values()), sides
    assert {True, False} == {side for (side,) in sides.values()}  # both sides are checked
    # What a split by comparison id would have done: some prompt on both sides (all twelve
    # on one side each has probability (0.3^3 + 0.7^3)^12 = 6e-6).
    assert any(len(side) == 2 for side in by_comparison_id.values())


def test_the_policy_trains_on_no_prompt_the_gate_judges_on(feedback, channel, tmp_path):
    for i in range(10):
        for rater in range(2):
            record_ranking(feedback.stub, feedback.http, f"Topic {i}?", [f"a{rater}", f"b{rater}"])
    taken = snapshot.export(channel, tmp_path, None, HELDOUT_PERCENT)

    train, held = prompts(taken.path, heldout=False), prompts(taken.path, heldout=True)

    assert train and held
    assert not {prompt_key(p) for p in train} & {prompt_key(p) for p in held}
    assert len(train) + len(held) == 10  # each prompt once, on its side


def test_the_judge_and_the_reward_model_train_on_disjoint_prompts(feedback, channel, tmp_path):
    record_great_rankings(feedback.stub, feedback.http, 30)
    for rater in range(2):  # a second rater of some prompts: same prompt, same half
        for i in range(10):
            record_ranking(feedback.stub, feedback.http, f"Describe item {i}.", [f"x{rater}", "y"])
    dataset = snapshot.export(channel, tmp_path, None, HELDOUT_PERCENT).path

    halves = {role: comparisons(dataset, heldout=False, fold=role) for role in ("reward", "judge")}

    keys = {role: {prompt_key(c.prompt) for c in half} for role, half in halves.items()}
    assert keys["reward"] and keys["judge"]
    assert not keys["reward"] & keys["judge"]
    assert len(halves["reward"]) + len(halves["judge"]) == len(comparisons(dataset, False))


def test_an_export_since_the_last_one_holds_only_the_new_groups(feedback, channel, tmp_path):
    record_great_rankings(feedback.stub, feedback.http, 5)
    first = snapshot.export(channel, tmp_path, None, HELDOUT_PERCENT)
    assert first.groups == 5
    record_ranking(feedback.stub, feedback.http, "New one.", ["a", "b"])
    record_ranking(feedback.stub, feedback.http, "New two.", ["c", "d", "e"])

    later = snapshot.export(channel, tmp_path, first.until, HELDOUT_PERCENT)

    assert later.until > first.until
    groups = list(snapshot.read(later.path))
    assert sorted(g.prompt[0]["content"] for g in groups) == ["New one.", "New two."]
    assert later.groups == 2 and later.pairs == 1 + 3
    old_ids = {g.comparison_id for g in snapshot.read(first.path)}
    assert not old_ids & {g.comparison_id for g in groups}
    # Nothing new since: an empty snapshot, not an error.
    empty = snapshot.export(channel, tmp_path, later.until, HELDOUT_PERCENT)
    assert empty.groups == 0 and empty.pairs == 0
    assert list(snapshot.read(empty.path)) == []


def test_the_file_holds_exactly_what_the_export_reported(feedback, channel, tmp_path):
    # The feedback service names every export by a fresh snapshot id (snap_<uuid4>), so the
    # same snapshot id never comes back through the service and "an existing file is not
    # rewritten" cannot be reached from here; what is checked instead is that the file is the
    # whole export, read back as written.
    record_great_rankings(feedback.stub, feedback.http, 4, seed=1)
    taken = snapshot.export(channel, tmp_path, None, HELDOUT_PERCENT)
    lines = taken.path.read_text().splitlines()
    groups = list(snapshot.read(taken.path))
    assert [g.to_json() for g in groups] == lines
    assert [snapshot.Group.from_json(line) for line in lines] == groups
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_heldout_choice_is_deterministic_and_close_to_the_asked_share():
    ids = [
        prompt_key([{"role": "user", "content": f"Prompt {uuid.UUID(int=i).hex}"}])
        for i in range(10_000)
    ]
    for percent in (10, 20, 50):
        chosen = [is_heldout(i, percent) for i in ids]
        assert chosen == [is_heldout(i, percent) for i in ids]
        share = 100 * sum(chosen) / len(ids)
        assert abs(share - percent) <= 2, (percent, share)
    # A bigger share keeps every group a smaller one held out.
    assert all(is_heldout(i, 20) for i in ids if is_heldout(i, 10))
