"""The gateway's Prometheus metrics (names are part of the Grafana dashboards and alerts).

Counters count what this process did since it started. The spool gauges are read from the
spool when Prometheus scrapes (see :func:`watch_spool`), so they are right even for records
left over from before a restart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import Counter, Gauge

RECORDS_DELIVERED = Counter(
    "flywheel_gateway_records_delivered",
    "Spooled answers accepted by the feedback service. outcome=created: stored now; "
    "outcome=duplicate: it already had them (a retry after a lost reply, never stored twice).",
    ["outcome"],
)
RECORD_ERRORS = Counter(
    "flywheel_gateway_record_errors",
    "Failed RecordInteraction attempts by gRPC status code (the record stays in the spool, "
    "except for the permanent refusals also counted in records_dead).",
    ["code"],
)
RECORDS_DEAD = Counter(
    "flywheel_gateway_records_dead",
    "Answers the feedback service refused for good, moved to the spool's dead-letter table.",
)
SPOOL_PENDING = Gauge(
    "flywheel_gateway_spool_pending",
    "Answers served but not yet accepted by the feedback service. Growth means it is down.",
)
SPOOL_OLDEST_AGE = Gauge(
    "flywheel_gateway_spool_oldest_age_seconds",
    "How long the oldest pending answer has waited in the spool (0 when it is empty).",
)
SPOOL_DEAD = Gauge(
    "flywheel_gateway_spool_dead",
    "Records in the spool's dead-letter table, waiting for someone to look at them.",
)
RATE_LIMITED = Counter(
    "flywheel_gateway_rate_limited",
    "Requests refused by the per-key rate limit.",
)
RATE_LIMIT_ERRORS = Counter(
    "flywheel_gateway_rate_limit_errors",
    "Rate-limit checks that could not reach Redis; those requests were served (fail open).",
)


class _SpoolStats(Protocol):
    def pending_count(self) -> int: ...
    def dead_count(self) -> int: ...
    def oldest_enqueued_at(self) -> float | None: ...


def watch_spool(spool: _SpoolStats) -> None:
    """Point the spool gauges at ``spool`` (the last one watched wins; one spool per process).

    A spool that cannot be read (closed, disk gone) reads as NaN rather than failing the scrape.
    """

    def guarded(read: Callable[[], float]) -> Callable[[], float]:
        def value() -> float:
            try:
                return float(read())
            except Exception:
                return math.nan

        return value

    def oldest_age() -> float:
        oldest = spool.oldest_enqueued_at()
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    SPOOL_PENDING.set_function(guarded(spool.pending_count))
    SPOOL_DEAD.set_function(guarded(spool.dead_count))
    SPOOL_OLDEST_AGE.set_function(guarded(oldest_age))


CANARY_ROUTED = Counter(
    "flywheel_gateway_canary_requests_total",
    "Chat requests sent to the policy canary (the API key's bucket lies in its share).",
)
