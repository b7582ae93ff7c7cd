"""A run driven in the test process (no Celery): real feedback service, real subprocess
stages on the tiny model, real registry and Redis."""

from __future__ import annotations

from services.trainer.control import Trainer
from tests.trainer.trainer_helpers import record_great_rankings


def test_a_run_trains_gates_and_promotes_an_rm_and_a_policy(feedback, settings, model_store):
    record_great_rankings(feedback.stub, feedback.http, 40)
    trainer = Trainer(settings)
    queued: list[str] = []
    started = trainer.check(queued.append)
    assert started["started"] and queued == [started["run_id"]], started

    assert trainer.drive(queued[0]) == "succeeded"

    run = trainer.store.get(queued[0])
    assert [s for s in run.stages] == [
        "snapshot",
        "reward_model",
        "rm_gate",
        "ppo",
        "policy_gate",
        "promote",
    ]
    assert all(s.status == "done" for s in run.stages.values())
    reward = model_store.promoted("reward")
    policy = model_store.promoted("policy")
    assert (
        reward is not None
        and reward.manifest.data_snapshot_id == run.stages["snapshot"].outputs["snapshot_id"]
    )
    assert policy.version == "v1" and policy.manifest.parent == "v0"
    assert run.stages["reward_model"].outputs["heldout_accuracy"] >= 0.55
    # The same comparisons do not start a second run.
    assert trainer.check(queued.append)["started"] is False
