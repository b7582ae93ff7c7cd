"""What the trainer's control tasks do, as plain methods (tasks.py only calls them): checks,
status, cancel, the reconciler and the watch. Cheap, and no torch. Driving a run is the
train worker's, in pipeline.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import redis
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.generated.flywheel.v1 import feedback_pb2, feedback_pb2_grpc
from services.common.redis_names import TRAINER_FIRST_CHECK
from services.common.registry import ModelRegistry
from services.common.service_auth import service_channel
from services.common.training_runs import RunSummary, StageSummary
from services.trainer.lease import Lease
from services.trainer.settings import TrainerSettings
from services.trainer.store.runs import Run, RunStore
from services.trainer.trigger import decide
from services.trainer.watch import Watch

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
        canary = self.registry.canary("policy")
        if canary is not None:
            # One candidate at a time: the next run starts from the policy the canary's
            # decision leaves serving.
            reason = f"policy/{canary.version} is a canary; the next run waits for its decision"
            return {"started": False, "run_id": None, "reason": reason}
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

    def watch(self) -> dict[str, Any]:
        """Decide the policy canary, or roll back a promoted policy shown worse than its
        parent (watch.py); what it saw and did."""
        return asdict(self._watch().look())

    def watch_report(self) -> dict[str, Any] | None:
        """The watch's last look, as the status views show it (None before its first)."""
        return self._watch().last_report()

    # ---- helpers ------------------------------------------------------------------------

    def _watch(self) -> Watch:
        return Watch(self.settings, self.registry, self.store, self.redis, self._thumbs_since)

    def _thumbs_since(self, since: datetime | None) -> dict[str, tuple[int, int]]:
        thumbs = self._stats(None, thumbs_since=since).thumbs
        return {t.model_version: (t.thumbs_up, t.thumbs_down) for t in thumbs}

    def _stats(
        self, since: datetime | None, thumbs_since: datetime | None = None
    ) -> feedback_pb2.StatsResponse:
        request = feedback_pb2.StatsRequest()
        for field, moment in (("comparisons_since", since), ("thumbs_since", thumbs_since)):
            if moment is not None:
                stamp = Timestamp()
                stamp.FromDatetime(moment)
                getattr(request, field).CopyFrom(stamp)
        token = self.settings.resolved_service_token()
        with service_channel(self.settings.feedback_grpc_target, token) as channel:
            return feedback_pb2_grpc.FeedbackServiceStub(channel).Stats(request, timeout=30)

    def _first_check(self) -> datetime:
        self.redis.set(TRAINER_FIRST_CHECK, _now().isoformat(), nx=True)
        return datetime.fromisoformat(self.redis.get(TRAINER_FIRST_CHECK).decode())


def describe(run: Run) -> dict[str, Any]:
    """A run as `flywheel train status` and the chat page read it (JSON-able)."""

    def moment(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return RunSummary(
        id=run.id,
        status=run.status,
        trigger=run.trigger,
        reason=run.reason,
        created_at=moment(run.created_at),
        finished_at=moment(run.finished_at),
        cancel_requested=run.cancel_requested,
        stages=[
            StageSummary(s.name, s.status, s.attempts, s.seconds, s.reason, s.outputs)
            for s in run.stages.values()
        ],
    ).to_json()
