"""A run driven in the test process (no Celery): real feedback service, real subprocess
stages on the tiny model, real registry and Redis; and what the driver shows Prometheus."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from services.common.training_runs import RUN_OUTCOMES, STAGE_NAMES
from services.rlhf.metric_names import STANDARD_METRIC_NAMES
from services.trainer import pipeline
from services.trainer.control import Trainer
from services.trainer.settings import TrainerSettings
from services.trainer.stages.context import StageResult
from tests.harness import wait_for
from tests.trainer.trainer_helpers import HELD_OUT_SAFE_RANKINGS, drive, record_great_rankings

REPO = Path(__file__).resolve().parents[2]


def test_a_run_trains_gates_and_promotes_an_rm_and_a_policy(feedback, settings, model_store):
    record_great_rankings(feedback.stub, feedback.http, HELD_OUT_SAFE_RANKINGS)
    trainer = Trainer(settings)
    queued: list[str] = []
    started = trainer.check(queued.append)
    assert started["started"] and queued == [started["run_id"]], started

    assert drive(trainer.settings, queued[0]) == "succeeded"

    run = trainer.store.get(queued[0])
    assert [s for s in run.stages] == [
        "snapshot",
        "reward_model",
        "judge_model",
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
    gate = run.stages["policy_gate"].outputs
    # The policy gate's judge is not the reward model PPO optimised against: another model,
    # trained on the other half of the training prompts.
    assert gate["reward_model"] == f"reward/{run.stages['reward_model'].outputs['version']}"
    assert gate["judge"] == f"judge/{run.stages['judge_model'].outputs['version']}"
    judge = model_store.get("judge", run.stages["judge_model"].outputs["version"])
    assert judge.path != reward.path and model_store.promoted("judge").version == judge.version
    judge_groups = run.stages["judge_model"].outputs["groups"]
    reward_groups = run.stages["reward_model"].outputs["groups"]
    assert judge_groups > 0 and reward_groups > 0
    assert (
        judge_groups + reward_groups
        == run.stages["snapshot"].outputs["groups"]
        - (run.stages["snapshot"].outputs["heldout_groups"])
    )
    # The tax and the collapse checks against the reference (v0), the win rate on its bound.
    assert gate["reference_version"] == "v0" and set(gate["reference"]) == set(gate["candidate"])
    assert gate["win_rate_lower_bound"] <= gate["win_rate"] and gate["alpha"] == 0.05
    # Prometheus shows what the policy gate decided on, and the PPO stage's last iteration.
    lower = REGISTRY.get_sample_value("flywheel_trainer_policy_win_rate_lower_bound")
    assert lower == gate["win_rate_lower_bound"]
    assert REGISTRY.get_sample_value("flywheel_trainer_policy_win_rate_threshold") == 0.0
    assert ppo_gauge("objective/kl") == run.stages["ppo"].outputs["objective/kl"]
    # The same comparisons do not start a second run.
    assert trainer.check(queued.append)["started"] is False


def ppo_gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value("flywheel_trainer_ppo_metric", {"name": name})


def test_a_ppo_result_sets_a_gauge_per_standard_metric_name():
    last = {name: float(i) for i, name in enumerate(STANDARD_METRIC_NAMES, start=1)}
    history = [dict.fromkeys(last, 0.0), last]
    pipeline._observe("ppo", StageResult("done", {"version": "v9", **last, "history": history}))

    assert {name: ppo_gauge(name) for name in STANDARD_METRIC_NAMES} == last
    assert ppo_gauge("history") is None and ppo_gauge("version") is None


def test_a_fresh_trainer_exports_zero_counts_and_no_quality_numbers():
    """Before any run: every run, promotion and rollback series at 0 (so increase() sees the
    first one), and the quality gauges NaN (Grafana shows no value, not a measured 0%)."""
    script = (
        "import services.trainer.pipeline\n"
        "from prometheus_client import generate_latest\n"
        "print(generate_latest().decode())"
    )
    text = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(metric: str, **labels: str) -> float | None:
        return samples.get((metric, frozenset(labels.items())))

    for stage in STAGE_NAMES:
        for outcome in RUN_OUTCOMES:
            assert value("flywheel_trainer_runs_total", stage=stage, outcome=outcome) == 0
    for role in ("policy", "reward"):
        assert value("flywheel_trainer_promotions_total", role=role) == 0
        assert value("flywheel_trainer_rollbacks_total", role=role) == 0
    for gauge in (
        "flywheel_trainer_rm_heldout_accuracy",
        "flywheel_trainer_policy_win_rate",
        "flywheel_trainer_policy_win_rate_lower_bound",
        "flywheel_trainer_policy_win_rate_threshold",
        "flywheel_trainer_policy_kl",
    ):
        assert math.isnan(value(gauge)), gauge
    for name in STANDARD_METRIC_NAMES:
        assert math.isnan(value("flywheel_trainer_ppo_metric", name=name)), name


def start_run(feedback, settings, monkeypatch, **overrides) -> tuple[Trainer, str]:
    for name, value in overrides.items():
        monkeypatch.setenv(f"FLYWHEEL_TRAINER_{name.upper()}", str(value))
    record_great_rankings(feedback.stub, feedback.http, HELD_OUT_SAFE_RANKINGS)
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
    outcome = drive(trainer.settings, run_id)

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
    outcome = drive(trainer.settings, run_id)

    run = trainer.store.get(run_id)
    assert run.status == "rejected" and outcome.startswith("rejected at policy_gate"), outcome
    assert "perplexity on untrained text" in run.stages["policy_gate"].reason
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
    driver = threading.Thread(target=lambda: outcome.append(drive(trainer.settings, run_id)))
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


def test_a_stage_past_its_time_limit_fails_the_run_without_a_retry(
    feedback, settings, model_store, monkeypatch
):
    """One limit, one outcome, whichever executor (the Kubernetes one sets it as the Job's
    activeDeadlineSeconds: tests/trainer/executors/test_kubernetes.py)."""
    # Less than a stage's start-up alone.
    trainer, run_id = start_run(feedback, settings, monkeypatch, stage_time_limit_s=0.5)

    outcome = drive(trainer.settings, run_id)

    assert outcome.startswith("failed at reward_model: ran past the stage time limit (0.5 s")
    run = trainer.store.get(run_id)
    assert run.status == "failed"
    assert run.stages["reward_model"].attempts == 1  # not retried
    assert model_store.promoted("policy").version == "v0"


def test_a_run_with_too_few_held_out_groups_waits_for_more_data(feedback, settings, model_store):
    """Waiting is no rejection: nothing was judged, and the trigger starts again once more
    comparisons arrive."""
    record_great_rankings(feedback.stub, feedback.http, 5)  # 1 held out, where 3 are needed
    trainer = Trainer(settings)
    queued: list[str] = []
    assert trainer.check(queued.append, forced=True)["started"]

    outcome = drive(trainer.settings, queued[0])

    assert outcome.startswith("waiting at snapshot: ")
    run = trainer.store.get(queued[0])
    assert run.status == "waiting" and "too few to gate on" in run.reason
    assert list(run.stages) == ["snapshot"]
    assert "no new comparisons" in trainer.check(queued.append)["reason"]
