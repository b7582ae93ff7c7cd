"""The flywheel turning with the real trainer processes: a Celery control worker, a train
worker and beat (never eager mode) on real Redis, the real feedback service, the tiny model,
and the engine that serves what the trainer promotes.

Each test starts the processes of ``python -m services.trainer`` as a deployment would and
watches what users and operators see: the registry, the run record, the engine's /info.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery

from services.inference.engine.server import EngineServer
from services.inference.gateway.settings import GatewaySettings
from services.inference.gateway.status import FlywheelStatus
from services.trainer.store.runs import RunStore
from tests.harness import wait_for
from tests.inference.inference_helpers import engine_settings
from tests.trainer.trainer_helpers import (
    HELD_OUT_SAFE_RANKINGS,
    REPO,
    TrainerProcess,
    record_great_rankings,
    record_thumbs,
)

# A hang's bound, not a speed target: a run takes 20-110 s here (2 cores, under the suite).
RUN_TIMEOUT_S = 600
pytestmark = pytest.mark.timeout(2 * RUN_TIMEOUT_S)  # the suite's 300 s would cut it short


class Deployment:
    """The trainer's three processes, and a Celery client to talk to them as the CLI does."""

    def __init__(self, env: dict[str, str], log_dir) -> None:
        self.env = env
        self.control = TrainerProcess(["worker", "control"], env, log_dir / "control.log")
        self.train = TrainerProcess(["worker", "train"], env, log_dir / "train.log")
        self.beat = TrainerProcess(["beat"], env, log_dir / "beat.log")
        self.client = Celery(broker=env["FLYWHEEL_REDIS_URL"], backend=env["FLYWHEEL_REDIS_URL"])
        self.store = RunStore(f"sqlite:///{env['FLYWHEEL_DATA_DIR']}/trainer.sqlite3")

    def start(self, beat: bool = True) -> Deployment:
        for process in (self.control, self.train, *([self.beat] if beat else [])):
            process.start()
        return self

    def stop(self) -> None:
        for process in (self.beat, self.train, self.control):
            process.stop()
        self.client.close()
        self.store.close()

    def call(self, task: str, *args, timeout: float = 60, **kwargs):
        return self.send(task, *args, **kwargs).get(timeout=timeout)

    def send(self, task: str, *args, **kwargs):
        """As the CLI sends: by name, to the control queue (the run task routes to train)."""
        queue = "train" if task == "flywheel.trainer.drive" else "control"
        return self.client.send_task(task, args=args, kwargs=kwargs, queue=queue)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log()[-6000:]}"
            for p in (self.control, self.train, self.beat)
        )

    def wait_for_run(self, run_id: str, timeout: float = RUN_TIMEOUT_S):
        try:
            wait_for(lambda: not self.store.get(run_id).active, timeout, f"{run_id} to end")
        except AssertionError:
            raise AssertionError(f"{run_id} did not end:\n{self.logs()}") from None
        return self.store.get(run_id)


@pytest.fixture
def deployment(env, tmp_path) -> Iterator[Deployment]:
    (tmp_path / "trainer").mkdir(exist_ok=True)
    deployment = Deployment(env, tmp_path)
    yield deployment
    deployment.stop()


@pytest.fixture
def engine(model_store, trainer_redis_url) -> Iterator[EngineServer]:
    server = EngineServer(engine_settings(model_store, trainer_redis_url))
    server.start()
    yield server
    server.stop()


def flywheel(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def metrics_of(port: str) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def served_version(engine: EngineServer) -> str:
    info = httpx.get(f"http://127.0.0.1:{engine.http.port}/info", timeout=10).json()
    return info["model_version"]


def chat_page_status(env: dict[str, str], engine: EngineServer, feedback) -> dict:
    """What the gateway's GET /v1/flywheel/status answers, asked of these processes."""
    settings = GatewaySettings(
        FLYWHEEL_REDIS_URL=env["FLYWHEEL_REDIS_URL"],
        feedback_grpc_target=feedback.target,
        status_timeout_s=30,
    )

    async def read() -> dict:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{engine.http.port}") as probe:
            status = FlywheelStatus(settings, probe)
            try:
                return await status.current()
            finally:
                await status.close()

    return asyncio.run(read())


def first_run(deployment: Deployment) -> str:
    wait_for(lambda: deployment.store.recent(1), 60, "beat's check to start a run")
    return deployment.store.recent(1)[0].id


def canary_of(engine: EngineServer) -> str | None:
    info = httpx.get(f"http://127.0.0.1:{engine.http.port}/info", timeout=10).json()
    return info["canary_version"]


def test_comparisons_become_a_canary_which_is_rolled_back_when_users_dislike_it(
    deployment, feedback, engine, model_store
):
    assert served_version(engine) == "v0"
    # 3 pairs a ranking, over the 60 that start a run.
    record_great_rankings(feedback.stub, feedback.http, HELD_OUT_SAFE_RANKINGS)
    deployment.env.update(
        FLYWHEEL_TRAINER_PPO_EPOCHS="2",
        FLYWHEEL_TRAINER_PPO_SCORE_CUT_ANSWERS="true",
        FLYWHEEL_TRAINER_GATE_SAMPLES_PER_PROMPT="2",
        FLYWHEEL_TRAINER_CANARY_SHARE="0.2",
    )
    deployment.start()
    run = deployment.wait_for_run(first_run(deployment))

    assert run.status == "succeeded", (run.reason, deployment.logs())
    # The new policy serves a fifth of the keys beside v0 until the watch decides it.
    assert model_store.promoted("policy").version == "v0"
    assert model_store.canary("policy").version == "v1"
    assert model_store.get("policy", "v1").status == "canary"
    assert model_store.promoted("reward").version == "v0"
    # The engine followed the canary announced on Redis: both versions loaded.
    wait_for(lambda: canary_of(engine) == "v1", 30, "the engine to load the canary policy/v1")
    assert served_version(engine) == "v0"
    wait_for(
        lambda: (deployment.call("flywheel.trainer.watch_report") or {}).get("kind") == "canary",
        30,
        "beat's watch to look at the canary",
    )

    # The operator's view, through the control worker as `flywheel train status` asks it.
    status = deployment.call("flywheel.trainer.status", 5)
    assert status[0]["id"] == run.id and status[0]["status"] == "succeeded"
    stages = {s["name"]: s for s in status[0]["stages"]}
    assert list(stages)[-1] == "promote"
    assert "objective/kl" in stages["ppo"]["outputs"]
    assert stages["rm_gate"]["outputs"]["promoted"] == "v0"
    assert stages["policy_gate"]["outputs"]["samples_per_prompt"] == 2
    # The policy's manifest says how it was trained (the demo's ablation re-runs it).
    made = model_store.get("policy", "v1").manifest.config
    assert made["ppo"]["ppo_epochs"] == 2 and made["ppo"]["truncated_answer_score"] is None
    assert made["iterations"] >= 1 and Path(made["dataset"]).is_file()

    # The same, as an operator types it.
    shown = flywheel(deployment.env, "train", "status")
    assert shown.returncode == 0, shown.stderr
    assert run.id in shown.stdout and "succeeded" in shown.stdout
    assert "heldout_accuracy=" in shown.stdout and "win_rate=" in shown.stdout
    assert "canary v1 on 20% of the keys" in shown.stdout and "decision: wait" in shown.stdout
    as_json = json.loads(flywheel(deployment.env, "train", "status", "--json").stdout)
    assert as_json["watch"]["kind"] == "canary" and as_json["runs"][0]["id"] == run.id
    # And as the chat page's status view shows it (the gateway asks the same control worker).
    page = chat_page_status(deployment.env, engine, feedback)
    assert page["serving"]["model_version"] == "v0", page
    assert (page["serving"]["canary_version"], page["serving"]["canary_share"]) == ("v1", 0.2)
    assert page["trainer"]["watch"]["kind"] == "canary", page["trainer"]
    assert page["trainer"]["watch"]["decision"] == "wait", page["trainer"]
    [shown_run] = [r for r in page["trainer"]["runs"] if r["id"] == run.id]
    gates = {s["name"]: s for s in shown_run["stages"]}
    assert shown_run["status"] == "succeeded" and gates["promote"]["version"] == "v1"
    assert gates["policy_gate"]["win_rate"] == stages["policy_gate"]["outputs"]["win_rate"]
    assert gates["rm_gate"]["heldout_accuracy"] == stages["rm_gate"]["outputs"]["heldout_accuracy"]
    waiting = flywheel(deployment.env, "train", "now")
    assert waiting.returncode == 1
    assert "policy/v1 is a canary; the next run waits for its decision" in waiting.stdout
    assert "no run is in progress" in flywheel(deployment.env, "train", "cancel").stdout

    # Prometheus sees the run end, the promotions, and the gate's numbers.
    train_metrics = metrics_of(deployment.env["FLYWHEEL_TRAINER_TRAIN_METRICS_PORT"])
    assert 'flywheel_trainer_runs_total{outcome="succeeded",stage="promote"} 1.0' in train_metrics
    assert 'flywheel_trainer_promotions_total{role="policy"} 0.0' in train_metrics  # a canary
    assert 'flywheel_trainer_promotions_total{role="reward"} 1.0' in train_metrics
    # The gauge shows the number the RM gate judged (the tiny RM's accuracy itself varies).
    accuracy = stages["rm_gate"]["outputs"]["heldout_accuracy"]
    assert f"flywheel_trainer_rm_heldout_accuracy {float(accuracy)!r}" in train_metrics
    threshold = stages["rm_gate"]["outputs"]["threshold"]  # the first RM: chance + margin
    assert f"flywheel_trainer_rm_gate_threshold {float(threshold)!r}" in train_metrics

    # A redelivered (or duplicated) run message does nothing twice.
    assert deployment.call("flywheel.trainer.drive", run.id) == "nothing to do: the run is over"
    again = deployment.store.get(run.id)
    assert {s.name: s.attempts for s in again.stages.values()} == {
        s.name: s.attempts for s in run.stages.values()
    }
    assert len(model_store.versions("policy")) == 2

    # During the canary, users like v0's answers and dislike v1's: beat's watch takes the
    # canary off (30 votes each, all one way, is where the always-valid test first tells
    # them apart at alpha 0.05), and every key gets v0 again.
    record_thumbs(feedback.stub, feedback.http, "v0", 1, 30)
    record_thumbs(feedback.stub, feedback.http, "v1", -1, 30)
    wait_for(lambda: model_store.canary("policy") is None, 30, "the canary's rollback")
    assert model_store.get("policy", "v1").status == "rolled-back"
    assert model_store.promoted("policy").version == "v0"
    assert deployment.store.rolled_back("v1")
    wait_for(lambda: canary_of(engine) is None, 30, "the engine to drop the canary")
    control_metrics = metrics_of(deployment.env["FLYWHEEL_TRAINER_CONTROL_METRICS_PORT"])
    assert 'flywheel_trainer_rollbacks_total{role="policy"} 1.0' in control_metrics
    assert 'flywheel_trainer_canary_decisions_total{decision="roll_back"} 1.0' in control_metrics


def test_two_triggers_at_once_give_one_run(deployment, feedback):
    record_great_rankings(feedback.stub, feedback.http, HELD_OUT_SAFE_RANKINGS)
    deployment.start(beat=False)
    replies = [deployment.send("flywheel.trainer.check", forced=True) for _ in range(3)]
    results = [reply.get(timeout=60) for reply in replies]
    assert sum(r["started"] for r in results) == 1, results
    assert len({r["run_id"] for r in results}) == 1
    assert len(deployment.store.recent(10)) == 1
    # The run itself is the other tests' subject: stop its worker (and stage) now rather than
    # wait out a warm shutdown, which lets the run finish first.
    deployment.train.kill()


def test_a_worker_killed_mid_ppo_resumes_the_run_from_its_checkpoint(
    deployment, feedback, env, model_store
):
    # Enough PPO iterations that the kill lands inside the stage, a checkpoint every one.
    # A canary that nobody votes on holds: promoted at its (here short) longest wait.
    deployment.env.update(
        FLYWHEEL_TRAINER_PPO_ITERATIONS="12",
        FLYWHEEL_TRAINER_CANARY_SHARE="0.2",
        FLYWHEEL_TRAINER_CANARY_MAX_WAIT_S="2",
    )
    record_great_rankings(feedback.stub, feedback.http, HELD_OUT_SAFE_RANKINGS)
    deployment.start()
    run_id = first_run(deployment)
    stage_dir = Path(env["FLYWHEEL_DATA_DIR"]) / "trainer" / "runs" / run_id / "ppo"
    # A checkpoint is complete once renamed into place (services/rlhf/checkpoint.py).
    complete = stage_dir / "checkpoints" / "checkpoint"
    wait_for(complete.is_dir, RUN_TIMEOUT_S, "a complete PPO checkpoint")
    deployment.train.kill()  # the worker and, with it, its stage process

    deployment.train.start()  # the reconciler hands the run to the new worker
    run = deployment.wait_for_run(run_id)
    assert run.status == "succeeded", (run.reason, deployment.logs())
    assert run.stages["ppo"].attempts == 2  # the stage resumed, not the run
    assert run.stages["reward_model"].attempts == 1  # done stages are never redone
    assert "resumed from" in deployment.train.log()
    wait_for(lambda: model_store.promoted("policy").version == "v1", 30, "the canary's promotion")
    assert [h["action"] for h in model_store.history("policy")][-2:] == ["canary", "promote"]
    assert len(model_store.versions("policy")) == 2
