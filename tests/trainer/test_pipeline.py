"""A run driven in the test process (no Celery): real feedback service, real subprocess
stages on the tiny model, real registry and Redis."""

from __future__ import annotations

import threading

from services.trainer.control import Trainer
from services.trainer.settings import TrainerSettings
from tests.harness import wait_for
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


def start_run(feedback, settings, monkeypatch, **overrides) -> tuple[Trainer, str]:
    for name, value in overrides.items():
        monkeypatch.setenv(f"FLYWHEEL_TRAINER_{name.upper()}", str(value))
    record_great_rankings(feedback.stub, feedback.http, 40)
    trainer = Trainer(TrainerSettings())
    queued: list[str] = []
    assert trainer.check(queued.append)["started"]
    return trainer, queued[0]


def test_the_rm_gate_rejects_a_reward_model_that_did_not_learn(
    feedback, settings, model_store, monkeypatch
):
    # A learning rate too small to move the weights, and a gate that asks for real learning
    # (a working RM reaches 1.0 on these comparisons: the test above).
    trainer, run_id = start_run(feedback, settings, monkeypatch, rm_lr=1e-12, rm_first_margin=0.45)
    outcome = trainer.drive(run_id)

    run = trainer.store.get(run_id)
    assert run.status == "rejected" and outcome.startswith("rejected at rm_gate")
    assert "held-out accuracy" in run.reason and "< 0.950" in run.reason
    assert "ppo" not in run.stages  # nothing after the gate ran
    assert model_store.promoted("reward") is None
    assert model_store.get("reward", "v0").status == "rejected"
    assert model_store.promoted("policy").version == "v0"


def test_the_policy_gate_rejects_a_policy_wrecked_by_training(
    feedback, settings, model_store, monkeypatch
):
    # A destructive learning rate: the policy forgets language (the alignment tax explodes).
    trainer, run_id = start_run(feedback, settings, monkeypatch, ppo_policy_lr=1.0)
    outcome = trainer.drive(run_id)

    run = trainer.store.get(run_id)
    assert run.status == "rejected" and outcome.startswith("rejected at policy_gate"), outcome
    assert "ptx perplexity" in run.stages["policy_gate"].reason
    assert "promote" not in run.stages
    assert model_store.promoted("policy").version == "v0"  # users keep the old policy
    assert model_store.get("policy", "v1").status == "rejected"
    assert model_store.promoted("reward").version == "v0"  # the RM passed its own gate


def test_a_cancelled_run_stops_its_stage_and_promotes_nothing(
    feedback, settings, model_store, monkeypatch
):
    # A PPO stage long enough to be cancelled while it runs.
    trainer, run_id = start_run(feedback, settings, monkeypatch, ppo_iterations=200)
    outcome: list[str] = []
    driver = threading.Thread(target=lambda: outcome.append(trainer.drive(run_id)))
    driver.start()
    wait_for(
        lambda: trainer.store.get(run_id).stages.get("ppo") is not None,
        120,
        "the PPO stage to start",
    )
    assert trainer.cancel()["cancelled"] == run_id
    driver.join(60)

    assert outcome == ["cancelled at ppo"]
    run = trainer.store.get(run_id)
    assert run.status == "cancelled" and not run.active
    assert run.stages["ppo"].status == "cancelled"
    assert model_store.promoted("policy").version == "v0"
    assert len(model_store.versions("policy")) == 1  # PPO never registered a candidate
