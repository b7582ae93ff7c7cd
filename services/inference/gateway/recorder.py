"""Drains the interaction spool into the feedback service (gRPC RecordInteraction).

A background thread takes the due records of the spool in rounds of up to ``batch``, sends
them concurrently (the feedback service commits concurrent writes together), and then:

- accepted (``created`` true or false: the RPC is idempotent on response_id, so a record sent
  again after a lost reply is answered ``created = false`` and never stored twice): deleted
  from the spool;
- refused for good (INVALID_ARGUMENT: malformed; ALREADY_EXISTS: the same response_id or
  candidate slot with other content, a gateway bug): moved to the dead-letter table and
  logged as an error, so it does not block the rest;
- any other failure (UNAVAILABLE and DEADLINE_EXCEEDED above all): left in the spool, and the
  recorder waits with exponential backoff and jitter before the next round. Codes that do not
  look transient (UNIMPLEMENTED, PERMISSION_DENIED, ...) are retried too, since they are
  configuration mistakes that get fixed, and dropping served answers is never right; they
  are logged as errors.

An enqueue wakes the thread at once (the spool calls :meth:`InteractionRecorder.wake`), except
while it backs off from an outage, so a burst of traffic does not hammer a service that is down.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future

import grpc

from services.common.generated.flywheel.v1 import feedback_pb2, feedback_pb2_grpc
from services.common.grpc_errors import field_violations
from services.common.retry import Backoff
from services.common.service_auth import service_channel
from services.inference.gateway import metrics
from services.inference.gateway.settings import GatewaySettings
from services.inference.gateway.spool import InteractionSpool, SpooledRecord

log = logging.getLogger(__name__)

PERMANENT_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS})
"""Refusals that no retry can fix: the record goes to the dead-letter table."""

TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
"""Failures expected while the feedback service restarts or is overloaded (logged as warnings;
every other non-permanent code is retried as well, but logged as an error)."""


def _describe(error: grpc.RpcError) -> str:
    code = error.code()
    text = f"{code.name if code else 'UNKNOWN'}: {error.details()}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = field_violations(error)
        if violations:
            text += " [" + "; ".join(f"{f}: {d}" for f, d in violations) + "]"
    return text


class InteractionRecorder:
    """Background delivery of spooled interactions; see the module docstring.

    ``channel`` may be given (tests, or a shared channel with TLS); otherwise a channel to
    ``feedback_target`` presenting ``service_token`` is made, whose reconnect backoff is capped at
    ``retry_max_s`` so that the recorder notices a recovered service within one retry period.
    """

    def __init__(
        self,
        spool: InteractionSpool,
        feedback_target: str,
        *,
        service_token: str,
        batch: int = 64,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        rpc_timeout_s: float = 10.0,
        idle_poll_s: float = 5.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.spool = spool
        self.feedback_target = feedback_target
        self.batch = batch
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.rpc_timeout_s = rpc_timeout_s
        self.idle_poll_s = idle_poll_s
        self._own_channel = channel is None
        self._channel = channel or service_channel(
            feedback_target,
            service_token,
            options=[
                ("grpc.initial_reconnect_backoff_ms", max(1, int(retry_initial_s * 1000))),
                ("grpc.max_reconnect_backoff_ms", max(1, int(retry_max_s * 1000))),
            ],
        )
        self._stub = feedback_pb2_grpc.FeedbackServiceStub(self._channel)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        # Outage bookkeeping (recorder thread only).
        self._backoff = Backoff(retry_initial_s, retry_max_s)  # counts consecutive failed rounds
        self._outage_since: float | None = None
        self._recovered_count: int | None = None  # delivered since the last recovery
        # Totals since start, for tests and `flywheel status`.
        self.delivered = 0
        self.duplicates = 0
        self.dead = 0
        spool.add_listener(self.wake)

    @classmethod
    def from_settings(
        cls, settings: GatewaySettings, spool: InteractionSpool
    ) -> InteractionRecorder:
        return cls(
            spool,
            settings.feedback_grpc_target,
            service_token=settings.resolved_service_token(),
            batch=settings.recorder_batch,
            retry_initial_s=settings.recorder_retry_initial_s,
            retry_max_s=settings.recorder_retry_max_s,
        )

    # ---- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("recorder already started")
        metrics.watch_spool(self.spool)
        pending = self.spool.pending_count()
        if pending:
            log.info("spool holds %d answers not yet recorded; delivering them", pending)
        self._thread = threading.Thread(target=self._run, name="interaction-recorder", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout: float = 5.0) -> int:
        """Deliver what is due for up to ``drain_timeout`` seconds (not while the feedback
        service is down), then stop. Returns how many records are left in the spool for the
        next start; they are not lost."""
        self._deadline = time.monotonic() + drain_timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(drain_timeout + self.rpc_timeout_s + 5)
            if self._thread.is_alive():
                log.error("recorder thread did not stop in time")
        if self._own_channel:
            self._channel.close()
        left = self.spool.pending_count()
        if left:
            log.info("recorder stopped; %d answers stay in the spool for the next start", left)
        return left

    def wake(self) -> None:
        """Look at the spool now (called by the spool after every enqueue)."""
        self._wake.set()

    # ---- the loop ------------------------------------------------------------------------

    def _draining_done(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self._deadline

    def _run(self) -> None:
        while not self._draining_done():
            try:
                records = self.spool.due(self.batch)
            except Exception:
                log.exception("cannot read the spool")
                self._backoff.failed()
                self._back_off()
                continue
            if not records:
                self._note_drained()
                if self._stop.is_set():
                    return
                self._idle_wait()
                continue
            try:
                ok = self._deliver(records)
            except Exception:  # a bug or a broken disk: keep the thread alive, retry later
                log.exception("recorder round failed")
                self._backoff.failed()
                ok = False
            if not ok:
                if self._stop.is_set():
                    return  # the service is down: no point draining, the spool keeps them
                self._back_off()

    def _idle_wait(self) -> None:
        timeout = self.idle_poll_s
        next_due = self.spool.next_due_at()
        if next_due is not None:
            timeout = min(timeout, max(0.0, next_due - time.time()))
        self._wake.wait(timeout)
        self._wake.clear()

    def _back_off(self) -> None:
        # Waits on _stop only: enqueues do not cut an outage's backoff short.
        self._stop.wait(self._backoff.delay())

    def _deliver(self, records: list[SpooledRecord]) -> bool:
        """Send one round; True if nothing failed transiently."""
        calls: list[tuple[SpooledRecord, Future]] = [
            (
                record,
                self._stub.RecordInteraction.future(
                    feedback_pb2.RecordInteractionRequest(interaction=record.interaction),
                    timeout=self.rpc_timeout_s,
                ),
            )
            for record in records
        ]
        delivered: list[int] = []
        retry: list[SpooledRecord] = []
        errors: dict[grpc.StatusCode, str] = {}
        created = 0
        for record, call in calls:
            try:
                response = call.result()
            except grpc.RpcError as error:
                code = error.code() or grpc.StatusCode.UNKNOWN
                metrics.RECORD_ERRORS.labels(code.name).inc()
                if code in PERMANENT_CODES:
                    self._dead_letter(record, _describe(error))
                else:
                    retry.append(record)
                    errors.setdefault(code, _describe(error))
                continue
            delivered.append(record.id)
            created += response.created
        if delivered:
            self.spool.mark_delivered(delivered)
            self._count_delivered(len(delivered), created)
        if retry:
            retry_at = time.time() + self._backoff.failed()
            first_error = next(iter(errors.values()))
            self.spool.mark_failed_many([r.id for r in retry], first_error, retry_at)
            self._note_outage(errors, len(retry), answered=bool(delivered))
            return False
        return True

    def _count_delivered(self, count: int, created: int) -> None:
        metrics.RECORDS_DELIVERED.labels("created").inc(created)
        metrics.RECORDS_DELIVERED.labels("duplicate").inc(count - created)
        self.delivered += count
        self.duplicates += count - created
        if count - created:
            log.info(
                "%d answers were already recorded (a retry after a lost reply); not stored twice",
                count - created,
            )
        if self._outage_since is not None:
            log.info(
                "feedback service at %s reachable again after %.1f s; delivering the backlog",
                self.feedback_target,
                time.time() - self._outage_since,
            )
            self._outage_since = None
            self._recovered_count = 0
            # Records held back during the outage need not wait out their backoff any more.
            self.spool.make_all_due()
        self._backoff.succeeded()
        if self._recovered_count is not None:
            self._recovered_count += count

    def _note_drained(self) -> None:
        if self._recovered_count is not None and self.spool.next_due_at() is None:
            log.info(
                "spool drained: %d answers delivered since the feedback service came back",
                self._recovered_count,
            )
            self._recovered_count = None

    def _note_outage(
        self, errors: dict[grpc.StatusCode, str], count: int, answered: bool = False
    ) -> None:
        """Log a round's failures: every refusal, and an outage once when it starts. A round
        the service ``answered`` in part is no new outage: when it comes back, the calls that
        left while the channel was still reconnecting fail UNAVAILABLE beside those that got
        through, and are retried after the shortest backoff."""
        unexpected = [c for c in errors if c not in TRANSIENT_CODES]
        if unexpected:
            # Not an outage but a misconfiguration or a bug: say so at every round.
            log.error(
                "feedback service at %s refuses records (%s); %d kept in the spool and retried",
                self.feedback_target,
                "; ".join(errors[c] for c in unexpected),
                count,
            )
        if self._outage_since is None and not answered:
            self._outage_since = time.time()
            self._recovered_count = None
            if not unexpected:
                log.warning(
                    "feedback service at %s unavailable (%s); answers are still served and "
                    "wait in the spool (%d pending); retrying with backoff up to %g s",
                    self.feedback_target,
                    "; ".join(errors.values()),
                    self.spool.pending_count(),
                    self.retry_max_s,
                )

    def _dead_letter(self, record: SpooledRecord, error: str) -> None:
        self.spool.dead_letter(record.id, error)
        metrics.RECORDS_DEAD.inc()
        self.dead += 1
        log.error(
            "feedback service permanently refused answer %s (spool id %d): %s; moved to the "
            "spool's dead-letter table for inspection (InteractionSpool.dead_letters)",
            record.response_id,
            record.id,
            error,
        )
