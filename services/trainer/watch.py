"""The watch: deciding the policy canary, and rolling back a promoted policy users like less.

Beat runs it every ``WATCH_INTERVAL_S`` on the control worker. It compares two versions'
thumbs with the always-valid test of sequential.py, so looking this often does not raise its
error rates:

- **during a canary**, the canary against the promoted version, counting only thumbs given
  since the canary started (both served the same users' traffic in the same period): promote
  it, roll it back (the registry's ``end_canary``), or wait, up to ``CANARY_MAX_WAIT_S``;
- **after a full promotion**, the promoted version against its parent, counting thumbs since
  the version's canary started (all of them when it had none): roll it back once shown worse.

Each look is published (Redis key, metrics) for `flywheel train status`, the chat page and the
trainer dashboard.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import redis

from services.common.redis_names import TRAINER_WATCH_REPORT
from services.common.registry import Canary, ModelRegistry
from services.trainer import metrics
from services.trainer.promotion import end_canary, promote, roll_back
from services.trainer.sequential import (
    CanaryDecision,
    RateComparison,
    RollbackVerdict,
    canary_decision,
    rollback_due,
)
from services.trainer.settings import TrainerSettings
from services.trainer.store.runs import RunStore

log = logging.getLogger(__name__)

ROLE = "policy"

# Thumbs (up, down) by version, counting those given at or after a time (None: all of them).
ThumbsSince = Callable[[datetime | None], dict[str, tuple[int, int]]]


@dataclass(frozen=True)
class WatchReport:
    """One look of the watch, as the status views show it (JSON-able via ``asdict``)."""

    kind: str  # "canary", "promoted" or "idle"
    decision: str  # canary: promote, roll_back, wait; promoted: roll_back, keep; idle: none
    reason: str
    at: str
    version: str | None = None
    against: str | None = None  # the promoted version (canary) or the parent (promoted)
    share: float = 0.0
    started_at: str | None = None
    waited_s: float = 0.0
    max_wait_s: float = 0.0
    votes: tuple[int, int] = (0, 0)  # (version, against)
    version_interval: tuple[float, float] | None = None
    against_interval: tuple[float, float] | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def canary_verdict(
    settings: TrainerSettings,
    canary: tuple[int, int],
    promoted: tuple[int, int],
    waited_s: float,
) -> CanaryDecision:
    """sequential.canary_decision with the settings' rule, on (up, down) thumbs of each."""
    return canary_decision(
        *canary,
        *promoted,
        waited_s=waited_s,
        alpha=settings.rollback_alpha,
        rollback_margin=settings.rollback_margin,
        promote_margin=settings.canary_margin,
        planned_votes=settings.rollback_planned_votes,
        max_wait_s=settings.canary_max_wait_s,
        at_longest_wait=settings.canary_at_longest_wait,
    )


def rollback_verdict(
    settings: TrainerSettings, version: tuple[int, int], parent: tuple[int, int]
) -> RollbackVerdict:
    """sequential.rollback_due with the settings' rule, on (up, down) thumbs of each."""
    return rollback_due(
        *version,
        *parent,
        alpha=settings.rollback_alpha,
        margin=settings.rollback_margin,
        planned_votes=settings.rollback_planned_votes,
    )


class Watch:
    def __init__(
        self,
        settings: TrainerSettings,
        registry: ModelRegistry,
        store: RunStore,
        redis_client: redis.Redis,
        thumbs_since: ThumbsSince,
    ) -> None:
        self.settings, self.registry, self.store = settings, registry, store
        self.redis, self.thumbs_since = redis_client, thumbs_since

    def look(self) -> WatchReport:
        serving = self.registry.serving(ROLE)
        if serving.canary is not None and serving.promoted is not None:
            report = self._decide_canary(serving.promoted, serving.canary)
        else:
            report = self._watch_promoted()
        self._publish(report)
        return report

    def last_report(self) -> dict | None:
        raw = self.redis.get(TRAINER_WATCH_REPORT)
        return json.loads(raw) if raw else None

    # ---- the two kinds of look ------------------------------------------------------------

    def _decide_canary(self, promoted: str, canary: Canary) -> WatchReport:
        s = self.settings
        thumbs = self.thumbs_since(canary.started)
        (c_up, c_down), (p_up, p_down) = (
            thumbs.get(canary.version, (0, 0)),
            thumbs.get(promoted, (0, 0)),
        )
        waited = (_now() - canary.started).total_seconds()
        decision = canary_verdict(s, (c_up, c_down), (p_up, p_down), waited)
        if decision.action == "promote":
            promote(self.registry, s.redis_url, ROLE, canary.version)
            metrics.CANARY_DECISIONS.labels("promote").inc()
            log.info("canary %s promoted: %s", canary.version, decision.reason)
        elif decision.action == "roll_back":
            # Logged first: whoever sees the canary gone finds the rollback on record (and a
            # crash in between leaves a canary the next look ends, logged once).
            self.store.record_rollback(canary.version, promoted, decision.reason)
            end_canary(self.registry, s.redis_url, ROLE, decision.reason)
            metrics.CANARY_DECISIONS.labels("roll_back").inc()
        return self._report(
            "canary",
            decision.action,
            decision.reason,
            canary.version,
            promoted,
            decision.seen,
            (c_up + c_down, p_up + p_down),
            share=canary.share,
            started_at=canary.started_at,
            waited_s=waited,
        )

    def _watch_promoted(self) -> WatchReport:
        promoted = self.registry.promoted(ROLE)
        if promoted is None or promoted.manifest.parent is None:
            return WatchReport(
                "idle", "none", "no promoted policy with a parent", _now().isoformat()
            )
        version, parent = promoted.version, promoted.manifest.parent
        if self.store.rolled_back(version):
            return WatchReport(
                "idle", "none", f"{version} was rolled back before", _now().isoformat()
            )
        thumbs = self.thumbs_since(self._canary_started(version))
        (v_up, v_down), (p_up, p_down) = thumbs.get(version, (0, 0)), thumbs.get(parent, (0, 0))
        verdict = rollback_verdict(self.settings, (v_up, v_down), (p_up, p_down))
        reason = verdict.reason
        if verdict.passed and self.store.record_rollback(version, parent, reason):
            now_serving = roll_back(self.registry, self.settings.redis_url, ROLE)
            reason = f"rolled back to {now_serving}: {reason}"
        return self._report(
            "promoted",
            "roll_back" if verdict.passed else "keep",
            reason,
            version,
            parent,
            verdict.seen,
            (v_up + v_down, p_up + p_down),
        )

    # ---- helpers --------------------------------------------------------------------------

    def _canary_started(self, version: str) -> datetime | None:
        """When ``version`` began serving as a canary (None if it never was one)."""
        for entry in reversed(self.registry.history(ROLE)):
            if entry["action"] == "canary" and entry["version"] == version:
                return datetime.fromisoformat(entry.get("started_at", entry["at"]))
        return None

    def _report(
        self,
        kind: str,
        decision: str,
        reason: str,
        version: str,
        against: str,
        seen: RateComparison,
        votes: tuple[int, int],
        **canary: object,
    ) -> WatchReport:
        return WatchReport(
            kind,
            decision,
            reason,
            _now().isoformat(),
            version=version,
            against=against,
            max_wait_s=self.settings.canary_max_wait_s if kind == "canary" else 0.0,
            votes=votes,
            version_interval=seen.version,
            against_interval=seen.parent,
            **canary,
        )

    def _publish(self, report: WatchReport) -> None:
        serving_canary = report.kind == "canary" and report.decision == "wait"
        metrics.CANARY_SHARE.set(report.share if serving_canary else 0.0)
        metrics.CANARY_AGE.set(report.waited_s if serving_canary else 0.0)
        metrics.CANARY_MAX_WAIT.set(self.settings.canary_max_wait_s)
        intervals = {"version": report.version_interval, "against": report.against_interval}
        for arm, votes in zip(("version", "against"), report.votes, strict=True):
            metrics.WATCH_VOTES.labels(arm).set(votes)
            low, high = intervals[arm] or (float("nan"), float("nan"))
            metrics.WATCH_BOUND.labels(arm, "low").set(low)
            metrics.WATCH_BOUND.labels(arm, "high").set(high)
        try:
            self.redis.set(TRAINER_WATCH_REPORT, json.dumps(asdict(report)))
        except redis.RedisError:
            log.warning("could not publish the watch's report; the status views show the last")
