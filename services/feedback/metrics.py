"""The feedback service's Prometheus metrics (names are part of the Grafana dashboards).

Counters count what this process did since it started; the gauges that must survive restarts
and agree between replicas (thumbs per model version, comparisons waiting, outbox backlog) are
read from the database at scrape time by :class:`StoreCollector`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

EVENTS = Counter(
    "flywheel_feedback_events",
    "Feedback requests by kind and outcome (accepted, replayed, refused).",
    ["kind", "outcome"],
)
ACCEPTED_BY_VERSION = Counter(
    "flywheel_feedback_accepted_by_version",
    "Accepted feedback events (replays excluded) by kind and the policy version of the first "
    "answer judged.",
    ["kind", "model_version"],
)
REFUSALS = Counter(
    "flywheel_feedback_refusals",
    "Refused feedback requests by kind and error code.",
    ["kind", "code"],
)
REQUEST_LATENCY = Histogram(
    "flywheel_feedback_request_duration_seconds",
    "HTTP and gRPC request latency, from request received to response ready.",
    ["api", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
WRITE_BATCH = Histogram(
    "flywheel_feedback_write_batch_size",
    "Requests committed together by the writer (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
COMMIT_LATENCY = Histogram(
    "flywheel_feedback_commit_duration_seconds",
    "Time to run and durably commit one write batch.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
OUTBOX_DELIVERED = Counter(
    "flywheel_feedback_outbox_delivered",
    "Events added to the Redis stream by the outbox relay (duplicates skipped are not counted).",
)
OUTBOX_ERRORS = Counter(
    "flywheel_feedback_outbox_errors",
    "Failed attempts to deliver outbox events to Redis (Redis down or refusing).",
)


EVENT_OUTCOMES = ("accepted", "replayed", "refused")


def create_event_series(kinds: Iterable[str]) -> None:
    """Every (kind, outcome) series of EVENTS at 0, so increase() sees the first event of each
    (it needs a sample before the first change)."""
    for kind in kinds:
        for outcome in EVENT_OUTCOMES:
            EVENTS.labels(kind, outcome)


class StoreCollector(Collector):
    """Gauges read from the store when Prometheus scrapes, cached for ``max_age_s``."""

    def __init__(self, read_stats: Callable[[], dict], max_age_s: float = 5.0) -> None:
        self._read_stats = read_stats
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict] | None = None

    def _stats(self) -> dict | None:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self._max_age_s:
                return self._cached[1]
            try:
                stats = self._read_stats()
            except Exception:  # a scrape must not fail because the database hiccuped
                log.warning("could not read store stats for /metrics", exc_info=True)
                return self._cached[1] if self._cached else None
            self._cached = (time.monotonic(), stats)
            return stats

    def describe(self):
        # Without describe(), registering would call collect(): a database query at start-up
        # whose result the cache would then serve for max_age_s.
        return []

    def collect(self):
        stats = self._stats()
        if stats is None:
            return
        thumbs = GaugeMetricFamily(
            "flywheel_feedback_thumbs",
            "Current thumbs (replaced votes excluded) by policy version and direction.",
            labels=["model_version", "direction"],
        )
        ratio = GaugeMetricFamily(
            "flywheel_feedback_thumbs_up_ratio",
            "Share of current thumbs that are up, by policy version: the live quality signal.",
            labels=["model_version"],
        )
        for version, up, down in stats["thumbs"]:
            thumbs.add_metric([version, "up"], up)
            thumbs.add_metric([version, "down"], down)
            if up + down:
                ratio.add_metric([version], up / (up + down))
        yield thumbs
        yield ratio
        yield GaugeMetricFamily(
            "flywheel_feedback_comparisons_pending",
            "Comparison pairs recorded since the last export: what the next training run adds.",
            value=stats["comparisons_pending"],
        )
        yield GaugeMetricFamily(
            "flywheel_feedback_outbox_backlog",
            "Events stored but not yet on the Redis stream; grows while Redis is unreachable.",
            value=stats["outbox_backlog"],
        )
        yield GaugeMetricFamily(
            "flywheel_feedback_interactions", "Served answers stored.", value=stats["interactions"]
        )


def register_store_collector(read_stats: Callable[[], dict]) -> StoreCollector:
    collector = StoreCollector(read_stats)
    REGISTRY.register(collector)
    return collector
