"""What the trainer's Celery tasks do, as plain methods (tasks.py only calls them).

The control side (checks, status, cancel, the reconciler and the rollback watch) is cheap and
imports no torch; the train side drives a run (pipeline.py), whose heavy stages run in
processes of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.generated.flywheel.v1 import feedback_pb2, feedback_pb2_grpc
from services.common.redis_names import TRAINER_FIRST_CHECK
from services.common.registry import ModelRegistry
from services.common.service_auth import service_channel
from services.trainer.executors.base import Executor
from services.trainer.executors.local import LocalExecutor
from services.trainer.lease import Lease
from services.trainer.pipeline import RunDriver
from services.trainer.promotion import roll_back
from services.trainer.sequential import rollback_due
from services.trainer.settings import TrainerSettings
from services.trainer.store.runs import Run, RunStore
from services.trainer.trigger import decide

log = logging.getLogger(__name__)

Enqueue = Callable[[str], None]


def _now() -> datetime:
    return datetime.now(UTC)


class Trainer:
    def __init__(self, settings: TrainerSettings, store: RunStore | None = None) -> None:
        self.settings = settings
        self.store = store or RunStore(settings.resolved_database_url)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.registry = ModelRegistry(settings.model_store_dir)

    # ---- control ------------------------------------------------------------------------

    def check(self, enqueue: Enqueue, forced: bool = False) -> dict[str, Any]:
        """Start a run if enough new comparisons arrived (or ``forced``, with any)."""
        active = self.store.active_run()
        if active is not None:
            return {"started": False, "run_id": active.id, "reason": "a run is in progress"}
        last = self.store.last_finished()
        since = last.snapshot_until if last else None
        stats = self._stats(since)
        waited = (_now() - (last.finished_at if last else self._first_check())).total_seconds()
        decision = decide(
            stats.comparisons_pending,
            waited,
            min_new_pairs=self.settings.min_new_pairs,
            max_wait_s=self.settings.max_wait_s,
            min_pairs_after_wait=self.settings.min_pairs_after_wait,
            forced=forced,
        )
        if not decision.start:
            return {"started": False, "run_id": None, "reason": decision.reason}
        run, created = self.store.create_run(decision.reason)
        if created:
            enqueue(run.id)
            log.info("started %s: %s", run.id, decision.reason)
        return {"started": created, "run_id": run.id, "reason": decision.reason}

    def reconcile(self, enqueue: Enqueue) -> list[str]:
        """Hand active runs whose owner stopped beating to a worker again; their ids."""
        if Lease(self.redis, self.settings.lease_ttl_s).holder() is not None:
            return []  # someone drives a run; its heartbeat is merely late
        handed = []
        for run in self.store.stale(self.settings.lease_ttl_s):
            beat = run.heartbeat_at.isoformat() if run.heartbeat_at else "never"
            self.store.note(run.id, f"heartbeat stale (last {beat}); handed to a worker again")
            enqueue(run.id)
            handed.append(run.id)
            log.warning("%s: owner gone (last heartbeat %s); re-enqueued", run.id, beat)
        return handed

    def status(self, limit: int = 10) -> list[dict[str, Any]]:
        return [describe(run) for run in self.store.recent(limit)]

    def cancel(self) -> dict[str, Any]:
        run = self.store.request_cancel()
        if run is None:
            return {"cancelled": None, "reason": "no run is in progress"}
        return {"cancelled": run.id, "reason": "the run stops at its next check"}

    def watch_rollback(self) -> dict[str, Any]:
        """Roll the promoted policy back once its live thumbs-up rate is shown below its
        parent's by the always-valid test (each version rolled back at most once)."""
        promoted = self.registry.promoted("policy")
        if promoted is None or promoted.manifest.parent is None:
            return {"rolled_back": None, "reason": "no promoted policy with a parent"}
        version, parent = promoted.version, promoted.manifest.parent
        if self.store.rolled_back(version):
            return {"rolled_back": None, "reason": f"{version} was rolled back before"}
        thumbs = {t.model_version: (t.thumbs_up, t.thumbs_down) for t in self._stats(None).thumbs}
        verdict = rollback_due(
            *thumbs.get(version, (0, 0)),
            *thumbs.get(parent, (0, 0)),
            alpha=self.settings.rollback_alpha,
            margin=self.settings.rollback_margin,
            planned_votes=self.settings.rollback_planned_votes,
        )
        if not verdict.passed:
            return {"rolled_back": None, "reason": verdict.reason}
        if not self.store.record_rollback(version, parent, verdict.reason):
            return {"rolled_back": None, "reason": f"{version} was rolled back before"}
        now_serving = roll_back(self.registry, self.settings.redis_url, "policy")
        return {"rolled_back": version, "to": now_serving, "reason": verdict.reason}

    # ---- train --------------------------------------------------------------------------

    def drive(self, run_id: str, executor: Executor | None = None) -> str:
        driver = RunDriver(self.settings, self.store, self.redis, executor or self._executor())
        outcome = driver.drive(run_id)
        log.info("%s: %s", run_id, outcome)
        return outcome

    def _executor(self) -> Executor:
        if self.settings.executor == "kubernetes":
            from services.trainer.executors.kubernetes import (
                KubernetesExecutor,
                KubernetesExecutorSettings,
            )

            return KubernetesExecutor(KubernetesExecutorSettings())
        return LocalExecutor(time_limit_s=self.settings.stage_time_limit_s)

    # ---- helpers ------------------------------------------------------------------------

    def _stats(self, since: datetime | None) -> feedback_pb2.StatsResponse:
        request = feedback_pb2.StatsRequest()
        if since is not None:
            stamp = Timestamp()
            stamp.FromDatetime(since)
            request.comparisons_since.CopyFrom(stamp)
        token = self.settings.resolved_service_token()
        with service_channel(self.settings.feedback_grpc_target, token) as channel:
            return feedback_pb2_grpc.FeedbackServiceStub(channel).Stats(request, timeout=30)

    def _first_check(self) -> datetime:
        self.redis.set(TRAINER_FIRST_CHECK, _now().isoformat(), nx=True)
        return datetime.fromisoformat(self.redis.get(TRAINER_FIRST_CHECK).decode())


def describe(run: Run) -> dict[str, Any]:
    """A run as `flywheel train status` shows it (JSON-able)."""

    def moment(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": run.id,
        "status": run.status,
        "trigger": run.trigger,
        "reason": run.reason,
        "created_at": moment(run.created_at),
        "finished_at": moment(run.finished_at),
        "cancel_requested": run.cancel_requested,
        "stages": [
            {
                "name": s.name,
                "status": s.status,
                "attempts": s.attempts,
                "seconds": s.seconds,
                "reason": s.reason,
                "outputs": s.outputs,
            }
            for s in run.stages.values()
        ],
    }
