"""The feedback service's operations, shared by its HTTP and gRPC front ends.

Owns the engines, the single writer and the outbox relay; the front ends only translate
requests into the calls below and answers back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import redis
import sqlalchemy as sa

from services.common.revocations import RevokedKeys
from services.feedback import metrics
from services.feedback.errors import RefusalKind, Refused
from services.feedback.relay import OutboxRelay
from services.feedback.settings import FeedbackSettings
from services.feedback.store import database, export, feedback, interactions, outbox
from services.feedback.store.batch_votes import VotesAhead
from services.feedback.store.feedback import Accepted, Credential, FeedbackCommand, Kind, Owned
from services.feedback.store.interactions import NewInteraction, ServedCache
from services.feedback.store.rawsql import RawSql
from services.feedback.writer import StoreWriter

log = logging.getLogger(__name__)


class FeedbackCore:
    def __init__(self, settings: FeedbackSettings, redis_client: redis.Redis | None = None) -> None:
        self.settings = settings
        url = settings.resolved_database_url
        if settings.migrate_on_start:
            database.migrate(url)
        self.read_engine = database.make_engine(url)
        if not database.schema_is_current(self.read_engine):
            raise RuntimeError(
                "the feedback database schema is not current; "
                "run `python -m services.feedback migrate`"
            )
        self.ttl = timedelta(seconds=settings.feedback_ttl_s)
        metrics.create_event_series(get_args(Kind))
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        self.revoked = RevokedKeys(self.redis, settings.revocation_refresh_s)
        self._cache = ServedCache()
        self._votes = VotesAhead()
        self._write_engine = database.make_engine(url, writer=True)
        self.writer = StoreWriter(
            self._write_engine,
            max_batch=settings.write_max_batch,
            after_commit=self._wake_relay,
            read_ahead=lambda conn, commands: feedback.read_ahead(
                conn, commands, self._cache, self._votes
            ),
        )
        self.checkpointer = database.Checkpointer(url, settings.checkpoint_interval_s)
        self.relay = OutboxRelay(
            self.read_engine,
            lambda ids: self.writer.call(lambda conn, _now: outbox.remove(conn, ids)),
            self.redis,
            batch_size=settings.outbox_batch,
            gather_s=settings.outbox_gather_s,
            stream_maxlen=settings.stream_maxlen,
            dedupe_ttl_s=settings.outbox_dedupe_ttl_s,
        )

    def _wake_relay(self) -> None:
        self.relay.wake()

    def start(self) -> None:
        self.revoked.start()
        self.writer.start()
        self.relay.start()
        self.checkpointer.start()

    def stop(self) -> None:
        self.revoked.stop()
        self.relay.stop()
        self.writer.stop()
        self.checkpointer.stop()
        self.read_engine.dispose()
        self._write_engine.dispose()

    # ---- writes -----------------------------------------------------------------------------

    async def submit_feedback(self, command: FeedbackCommand) -> Accepted:
        try:
            accepted = await self.writer.run(
                lambda conn, now: feedback.apply(
                    conn,
                    command,
                    now=now,
                    ttl=self.ttl,
                    cache=self._cache,
                    revoked=self.revoked,
                    votes=self._votes,
                ),
                read_ahead=command,
            )
        except Refused as refused:
            metrics.EVENTS.labels(command.kind, "refused").inc()
            metrics.REFUSALS.labels(command.kind, refused.code).inc()
            raise
        if accepted.replayed:
            metrics.EVENTS.labels(command.kind, "replayed").inc()
        else:
            metrics.EVENTS.labels(command.kind, "accepted").inc()
            metrics.ACCEPTED_BY_VERSION.labels(command.kind, accepted.model_version).inc()
        return accepted

    def record_interaction(self, new: NewInteraction) -> bool:
        return self.writer.call(lambda conn, now: interactions.record(conn, new, now))

    # ---- reads ------------------------------------------------------------------------------

    def get_interaction(self, response_id: str, credential: Credential | None) -> dict[str, Any]:
        """One stored answer; ``credential=None`` for trusted callers (gRPC, in-cluster)."""
        with self.read_engine.connect() as conn:
            row = interactions.get(conn, response_id)
        if row is None:
            raise Refused(
                RefusalKind.NOT_FOUND,
                "unknown_response",
                "no answer was served with this id",
                response_id=response_id,
            )
        if credential is not None:
            owned = Owned(response_id, row["api_key_id"], row["feedback_token_hash"])
            feedback.authorise(credential, [owned], self.revoked)
        return row

    def get_event(self, event_id: str, credential: Credential) -> dict[str, Any]:
        with self.read_engine.connect() as conn:
            found = feedback.get_event(conn, event_id)
            if found is None:
                raise Refused(
                    RefusalKind.NOT_FOUND,
                    "unknown_feedback",
                    "no feedback event has this id",
                    event_id=event_id,
                )
            group_id = found["row"]["candidate_group"]
            group = interactions.group_members(RawSql(conn), [group_id])[group_id]
        # The group shares one feedback token; the vote belongs to its rater's key.
        rater = found["row"]["rater_key_id"]
        owned = Owned(event_id, rater, group[0].feedback_token_hash)
        feedback.authorise(credential, [owned], self.revoked)
        return found["view"]

    def stats_ping(self) -> None:
        """Raise unless the store answers and the writer runs (the readiness check)."""
        if not self.writer.alive():
            raise RuntimeError("the store writer thread has stopped")
        with self.read_engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def stats(
        self, comparisons_since: datetime | None, thumbs_since: datetime | None = None
    ) -> dict[str, Any]:
        with self.read_engine.connect() as conn:
            return export.stats(conn, comparisons_since, thumbs_since)

    def metrics_stats(self) -> dict[str, Any]:
        """Stats with "pending" counted from the end of the newest export."""
        with self.read_engine.connect() as conn:
            return export.stats(conn, export.last_export_until(conn))

    # ---- exports ----------------------------------------------------------------------------

    def start_export(self, since: datetime | None, until: datetime | None) -> export.Snapshot:
        """Fix the window, record the snapshot and return it (pages come from export_pages)."""
        now = datetime.now(UTC)
        until = now if until is None or until > now else until
        if since is not None and since >= until:
            raise Refused(
                RefusalKind.BAD_WINDOW,
                "empty_window",
                "since must be before until",
                since=since.isoformat(),
                until=until.isoformat(),
            )
        # Every batch that started before `until` was fixed commits before this no-op does, and
        # every later batch stamps its rows after `until`: the window is complete when we read.
        self.writer.call(lambda conn, now: None)
        with self.read_engine.connect() as conn:
            snapshot = export.plan_snapshot(conn, since, until)
        self.writer.call(lambda conn, now: export.record_snapshot(conn, snapshot, now))
        log.info(
            "export %s: %d groups, %d pairs in [%s, %s)",
            snapshot.id,
            snapshot.total_groups,
            snapshot.total_pairs,
            since,
            until,
        )
        return snapshot

    def export_pages(self, snapshot: export.Snapshot, page_size: int) -> Iterator[list[dict]]:
        ids = snapshot.revision_ids
        for start in range(0, len(ids), page_size):
            with self.read_engine.connect() as conn:
                yield export.load_groups(conn, ids[start : start + page_size])


def engine_url_for_logs(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)
