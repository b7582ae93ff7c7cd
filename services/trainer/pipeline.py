"""Driving one run through its stages, safely; the whole flow in one place.

The flow (docs/trainer.md):

1. **Beat's check** (control.py, every CHECK_INTERVAL_S): enough new comparisons, or waited
   long enough, and no run active and no canary deciding -> a run is created and its id is
   sent to the train queue.
2. **The run** (here, on the train worker): the stages of services/common/training_runs.py
   in order, each done once: ``snapshot`` (too few comparisons: the run ends *waiting*),
   ``reward_model``, ``judge_model``, ``rm_gate``, ``ppo``, ``policy_gate``, ``promote``.
   The heavy ones run in their own process (stage_main.py, via an executor) and return a
   verdict; every registry write a verdict calls for is made here (_apply_verdict,
   _promote): the judge kept, the RM promoted at its gate (and left promoted if the policy
   gate then says no: it passed its own gate) or rejected, the policy rejected at its gate.
3. **The canary** (``promote``): the policy serves CANARY_SHARE of the API keys beside the
   promoted one (promotion.py).
4. **Beat's watch** (watch.py, every WATCH_INTERVAL_S): promotes the canary, rolls it back or
   waits; after a full promotion it keeps comparing the policy with its parent and rolls it
   back once shown worse.

How a run is driven: whoever holds the lease (lease.py) claims the run with the lease's
fencing token, renews both while it works, and walks the stages in order, skipping those
already done (so a redelivered task, or a worker restarted after a crash, never redoes one).
A crashed stage is retried up to ``stage_retries`` times, resuming from its checkpoints; a
stage past STAGE_TIME_LIMIT_S fails the run; a gate's "no" ends the run as rejected (the
candidate marked so). Cancel requests and a lost lease stop the running stage within a poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from services.common.service_auth import service_channel
from services.common.training_runs import STAGE_NAMES
from services.rlhf.metric_names import STANDARD_METRIC_NAMES
from services.trainer import metrics, snapshot
from services.trainer.executors import executor_for
from services.trainer.executors.base import Executor, StageJob
from services.trainer.lease import Lease
from services.trainer.promotion import promote, reject, start_canary
from services.trainer.settings import TrainerSettings
from services.trainer.stages.context import StageContext, StageResult
from services.trainer.store.runs import LostFence, Run, RunStore

log = logging.getLogger(__name__)

metrics.create_run_series(STAGE_NAMES)


class StageCrashed(Exception):
    """The stage's process failed: retried from its checkpoints."""


class StageTimedOut(Exception):
    """The stage ran past STAGE_TIME_LIMIT_S: the run fails, not retried (a retry would get
    the same time again)."""


class Stopped(Exception):
    """The run must stop now: cancelled, or this worker lost its lease."""


class RunDriver:
    def __init__(
        self,
        settings: TrainerSettings,
        store: RunStore,
        redis_client: redis.Redis,
        executor: Executor,
    ) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis_client
        self.executor = executor

    @classmethod
    def for_settings(cls, settings: TrainerSettings, executor: Executor | None = None) -> RunDriver:
        """The driver the train worker uses: its run store, Redis and executor."""
        return cls(
            settings,
            RunStore(settings.resolved_database_url),
            redis.Redis.from_url(settings.redis_url),
            executor or executor_for(settings),
        )

    def drive(self, run_id: str) -> str:
        """Run (or resume) ``run_id`` to its end; what happened, in a few words."""
        outcome = self._drive(run_id)
        log.info("%s: %s", run_id, outcome)
        return outcome

    def _drive(self, run_id: str) -> str:
        lease = Lease(self.redis, self.settings.lease_ttl_s)
        if not lease.acquire():
            return f"busy: the lease is held by {lease.holder()}"
        try:
            run = self.store.claim(run_id, lease.fence)
            if run is None:
                return "nothing to do: the run is over"
            fence = lease.fence
            lease.keep_alive(self.settings.heartbeat_s, lambda: self.store.heartbeat(run_id, fence))
            metrics.ACTIVE_RUN.set(1)
            return self._stages(run, fence, lease)
        except LostFence as exc:
            log.error("%s: %s; leaving the run to its new owner", run_id, exc)
            return "lost the run to another worker"
        finally:
            metrics.ACTIVE_RUN.set(0)
            lease.release()

    def _stages(self, run: Run, fence: int, lease: Lease) -> str:
        for stage in STAGE_NAMES:
            record = run.stages.get(stage)
            if record is not None and record.status == "done":
                continue
            if self._cancelled(run.id) or lease.lost.is_set():
                return self._stop(run.id, fence, stage, lease)
            try:
                result = self._attempts(run, fence, stage, lease)
            except Stopped:
                return self._stop(run.id, fence, stage, lease)
            if result.status in ("rejected", "waiting"):
                self.store.finish_run(run.id, fence, result.status, f"{stage}: {result.reason}")
                metrics.RUNS.labels(stage, result.status).inc()
                log.warning("%s %s at %s: %s", run.id, result.status, stage, result.reason)
                return f"{result.status} at {stage}: {result.reason}"
            if result.status != "done":
                self.store.finish_run(run.id, fence, "failed", f"{stage}: {result.reason}")
                metrics.RUNS.labels(stage, "failed").inc()
                return f"failed at {stage}: {result.reason}"
            run = self.store.get(run.id)
        self.store.finish_run(run.id, fence, "succeeded")
        metrics.RUNS.labels("promote", "succeeded").inc()
        log.info("%s succeeded: %s", run.id, run.stages["promote"].outputs)
        return "succeeded"

    def _attempts(self, run: Run, fence: int, stage: str, lease: Lease) -> StageResult:
        """Run ``stage`` until it gives a result or its retries are spent (then a result with
        status "failed")."""
        reason = ""
        for _ in range(self.settings.stage_retries + 1):
            attempt = self.store.start_stage(run.id, fence, stage)
            started = time.monotonic()
            try:
                result = self._run_stage(run, fence, stage, lease)
            except Stopped:
                self.store.finish_stage(run.id, fence, stage, "cancelled", reason="stopped")
                raise
            except StageTimedOut as exc:
                self.store.finish_stage(run.id, fence, stage, "failed", reason=str(exc))
                metrics.STAGE_SECONDS.labels(stage, "failed").observe(time.monotonic() - started)
                return StageResult("failed", {}, str(exc))
            except Exception as exc:  # a crash: retried from the stage's checkpoints
                reason = f"attempt {attempt}: {exc}"
                log.exception("%s: stage %s crashed (attempt %d)", run.id, stage, attempt)
                self.store.finish_stage(run.id, fence, stage, "failed", reason=reason)
                metrics.STAGE_SECONDS.labels(stage, "failed").observe(time.monotonic() - started)
                continue
            self.store.finish_stage(
                run.id, fence, stage, result.status, result.outputs, result.reason
            )
            metrics.STAGE_SECONDS.labels(stage, result.status).observe(time.monotonic() - started)
            _observe(stage, result)
            return result
        return StageResult("failed", {}, reason)

    def _run_stage(self, run: Run, fence: int, stage: str, lease: Lease) -> StageResult:
        ctx = StageContext(
            run.id,
            stage,
            run.outputs(),
            self.settings.resolved_runs_dir / "runs" / run.id / stage,
            self.settings,
        )
        if stage == "snapshot":
            return self._snapshot(ctx, fence)
        if stage == "promote":
            return self._promote(ctx)
        ctx.write_job()
        job = StageJob(
            run.id,
            stage,
            ["python", "-m", "services.trainer.stage_main", str(ctx.work_dir)],
            ctx.work_dir,
            time_limit_s=self.settings.stage_time_limit_s,
        )
        outcome = self.executor.run(job, self._should_stop(run.id, lease))
        if outcome.timed_out:
            raise StageTimedOut(
                f"ran past the stage time limit ({self.settings.stage_time_limit_s:g} s, "
                f"STAGE_TIME_LIMIT_S): {outcome.log_tail[-500:]}"
            )
        if outcome.stopped:
            raise Stopped(outcome.log_tail[-500:])
        if not outcome.succeeded:
            raise StageCrashed(f"exit {outcome.exit_code}: {outcome.log_tail[-1500:]}")
        result = StageResult.read(ctx.work_dir)
        self._apply_verdict(ctx, result)
        return result

    def _apply_verdict(self, ctx: StageContext, result: StageResult) -> None:
        """The registry writes a heavy stage's verdict calls for, all made here (a stage only
        registers its candidate): keep the judge, promote or reject the RM at its gate,
        reject the policy at its gate. The promote stage's canary is the last (_promote)."""
        registry, redis_url = ctx.registry, self.settings.redis_url
        match ctx.stage, result.status:
            case "judge_model", "done":
                self._keep_judge(ctx, result.outputs["version"])
            case "rm_gate", "done":
                # Promoted before PPO starts, so the reward service serves (best-of reranking)
                # the RM PPO trains on. A later policy-gate "no" leaves it promoted: it passed
                # its own gate, and the next RM continues from it and its data cursor.
                promote(registry, redis_url, "reward", result.outputs["promoted"])
            case "rm_gate", "rejected":
                reject(registry, "reward", ctx.inputs["reward_model"]["version"], result.reason)
            case "policy_gate", "rejected":
                reject(registry, "policy", ctx.inputs["ppo"]["version"], result.reason)

    def _promote(self, ctx: StageContext) -> StageResult:
        """Put the policy that passed the gates in front of users: as a canary for a share of
        the API keys (the watch promotes it or rolls it back, watch.py), or, with no canary
        share, to everyone at once."""
        version, share = ctx.inputs["ppo"]["version"], self.settings.canary_share
        if share > 0:
            start_canary(ctx.registry, self.settings.redis_url, "policy", version, share)
            return StageResult("done", {"version": version, "canary_share": share})
        promote(ctx.registry, self.settings.redis_url, "policy", version)
        return StageResult("done", {"version": version, "canary_share": 0.0})

    def _keep_judge(self, ctx: StageContext, version: str) -> None:
        """The judge serves no one: promoted so the next run's judge starts from it (unless
        the stage kept the promoted one, having nothing new to learn)."""
        promoted = ctx.registry.promoted("judge")
        if promoted is None or promoted.version != version:
            promote(ctx.registry, self.settings.redis_url, "judge", version)

    def _snapshot(self, ctx: StageContext, fence: int) -> StageResult:
        trained = self.store.last_finished(("succeeded",))
        since = trained.snapshot_until if trained else None
        token = self.settings.resolved_service_token()
        with service_channel(self.settings.feedback_grpc_target, token) as channel:
            taken = snapshot.export(
                channel,
                self.settings.resolved_runs_dir / "datasets",
                since,
                self.settings.heldout_percent,
            )
        # Recorded even if the run stops here: the trigger then waits for new comparisons.
        self.store.set_snapshot_until(ctx.run_id, fence, taken.until)
        outputs = taken.outputs()
        if taken.groups == 0:
            return StageResult("waiting", outputs, "no comparisons to train on")
        if taken.heldout_groups < self.settings.min_heldout_groups:
            return StageResult(
                "waiting",
                outputs,
                f"{taken.heldout_groups} held-out groups < {self.settings.min_heldout_groups}: "
                "too few to gate on; waiting for more comparisons",
            )
        return StageResult("done", outputs)

    def _should_stop(self, run_id: str, lease: Lease) -> Callable[[], bool]:
        return lambda: lease.lost.is_set() or self._cancelled(run_id)

    def _cancelled(self, run_id: str) -> bool:
        return self.store.get(run_id).cancel_requested

    def _stop(self, run_id: str, fence: int, stage: str, lease: Lease) -> str:
        if lease.lost.is_set():
            return "lost the lease; the reconciler hands the run on"
        self.store.finish_run(run_id, fence, "cancelled", f"cancelled at {stage}")
        metrics.RUNS.labels(stage, "cancelled").inc()
        return f"cancelled at {stage}"


def _observe(stage: str, result: StageResult) -> None:
    if stage == "reward_model" and "heldout_accuracy" in result.outputs:
        metrics.RM_ACCURACY.set(result.outputs["heldout_accuracy"])
    if stage == "rm_gate" and "decided_on" in result.outputs:
        metrics.RM_GATE_BOUND.set(result.outputs[result.outputs["decided_on"]])
        metrics.RM_GATE_THRESHOLD.set(result.outputs["threshold"])
    if stage == "policy_gate":
        metrics.WIN_RATE.set(result.outputs.get("win_rate", float("nan")))
        metrics.WIN_RATE_LOWER.set(result.outputs.get("win_rate_lower_bound", float("nan")))
        metrics.WIN_RATE_THRESHOLD.set(result.outputs.get("threshold", float("nan")))
        metrics.KL.set(result.outputs.get("kl", float("nan")))
    if stage == "ppo":
        # The stage reports its last iteration under the standard names (and a "history" of
        # every iteration, which a gauge cannot show).
        for name in STANDARD_METRIC_NAMES:
            metrics.PPO.labels(name).set(result.outputs.get(name, float("nan")))
