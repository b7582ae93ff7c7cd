"""The stage table and the run summary every reader of a run uses."""

from __future__ import annotations

import json

from services.common.training_runs import (
    OWN_PROCESS_STAGES,
    STAGE_NAMES,
    RunSummary,
    StageSummary,
    stage_spec,
)


def test_the_table_orders_the_stages_and_says_where_each_runs():
    assert STAGE_NAMES[0] == "snapshot" and STAGE_NAMES[-1] == "promote"
    assert len(set(STAGE_NAMES)) == len(STAGE_NAMES)
    assert {"snapshot", "promote"}.isdisjoint(OWN_PROCESS_STAGES)
    assert stage_spec("policy_gate").runs_in == "own process"


def test_a_summary_survives_json_and_shows_what_is_worth_a_glance():
    run = RunSummary(
        "run_1",
        "waiting",
        "120 new pairs",
        "snapshot: 2 held-out groups < 3",
        "2026-12-08T10:00:00+00:00",
        "2026-12-08T10:00:05+00:00",
        False,
        [StageSummary("snapshot", "waiting", 1, 4.5, "too few", {"groups": 9, "dataset": "/x"})],
    )
    again = RunSummary.from_json(json.loads(json.dumps(run.to_json())))

    assert again == run
    assert again.waiting_for_data and not again.active
    assert again.stage("snapshot").shown() == {"groups": 9}  # not the dataset's path
    assert again.output("snapshot", "dataset") == "/x" and again.output("ppo", "kl") is None
