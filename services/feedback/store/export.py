"""Exports of comparisons for training, recorded as snapshots, and the store's counters.

An export covers the comparisons recorded in ``[since, until)``, as they stood at ``until``:
a revision counts if it was recorded in the window and not superseded before ``until``.
Revisions are immutable and ``until`` is never in the future, so re-running a window later
yields exactly the same revisions; each export is recorded as a snapshot with a digest of the
revision ids, so a reward model that names its snapshot names exactly what trained it.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from services.feedback.store import outbox as outbox_rows
from services.feedback.store.tables import (
    comparisons,
    export_snapshots,
    feedback_events,
    interactions,
)


@dataclass(frozen=True)
class Snapshot:
    id: str
    since: datetime | None
    until: datetime
    revision_ids: list[str]
    total_groups: int
    total_pairs: int
    content_sha256: str


def _in_window(since: datetime | None, until: datetime) -> list[sa.ColumnElement[bool]]:
    clauses = [
        comparisons.c.recorded_at < until,
        comparisons.c.pair_count > 0,
        sa.or_(comparisons.c.superseded_at.is_(None), comparisons.c.superseded_at >= until),
    ]
    if since is not None:
        clauses.append(comparisons.c.recorded_at >= since)
    return clauses


def plan_snapshot(conn: sa.Connection, since: datetime | None, until: datetime) -> Snapshot:
    """Which revisions an export of ``[since, until)`` contains (read-only)."""
    rows = conn.execute(
        sa.select(comparisons.c.id, comparisons.c.pair_count)
        .where(*_in_window(since, until))
        .order_by(comparisons.c.recorded_at, comparisons.c.id)
    ).all()
    ids = [r.id for r in rows]
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return Snapshot(
        id=f"snap_{uuid.uuid4().hex}",
        since=since,
        until=until,
        revision_ids=ids,
        total_groups=len(ids),
        total_pairs=sum(r.pair_count for r in rows),
        content_sha256=digest,
    )


def record_snapshot(conn: sa.Connection, snapshot: Snapshot, now: datetime) -> None:
    conn.execute(
        export_snapshots.insert().values(
            id=snapshot.id,
            since=snapshot.since,
            until=snapshot.until,
            created_at=now,
            total_groups=snapshot.total_groups,
            total_pairs=snapshot.total_pairs,
            content_sha256=snapshot.content_sha256,
        )
    )


def load_groups(conn: sa.Connection, revision_ids: list[str]) -> list[dict[str, Any]]:
    """The comparison groups of these revisions, in the given order, with prompts and texts."""
    if not revision_ids:
        return []
    revisions = {
        row["id"]: dict(row)
        for row in conn.execute(
            sa.select(comparisons).where(comparisons.c.id.in_(revision_ids))
        ).mappings()
    }
    wanted = {r for rev in revisions.values() for r in rev["candidates"]}
    answers = {
        row["response_id"]: row
        for row in conn.execute(
            sa.select(
                interactions.c.response_id,
                interactions.c.messages,
                interactions.c.answer,
                interactions.c.model_version,
            ).where(interactions.c.response_id.in_(wanted))
        ).mappings()
    }
    groups = []
    for revision_id in revision_ids:
        rev = revisions[revision_id]
        candidates = [answers[r] for r in rev["candidates"]]
        groups.append({**rev, "prompt": candidates[0]["messages"], "answers": candidates})
    return groups


def _version_order(version: str) -> tuple[int, str]:
    match = re.fullmatch(r"v(\d+)", version)
    return (int(match.group(1)), version) if match else (1 << 30, version)


def stats(
    conn: sa.Connection, comparisons_since: datetime | None, thumbs_since: datetime | None = None
) -> dict[str, Any]:
    """Counts for Stats, /metrics, the trainer's "enough new data?" check and its canary
    watch (thumbs given since the canary started)."""

    def count(table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
        return conn.execute(
            sa.select(sa.func.count()).select_from(table).where(*where)
        ).scalar_one()

    by_kind = dict(
        conn.execute(
            sa.select(feedback_events.c.kind, sa.func.count()).group_by(feedback_events.c.kind)
        ).all()
    )
    pending_where = [comparisons.c.superseded_at.is_(None), comparisons.c.pair_count > 0]
    if comparisons_since is not None:
        pending_where.append(comparisons.c.recorded_at >= comparisons_since)
    groups, pairs = conn.execute(
        sa.select(
            sa.func.count(), sa.func.coalesce(sa.func.sum(comparisons.c.pair_count), 0)
        ).where(*pending_where)
    ).one()
    thumbs: dict[str, list[int]] = {}
    thumbs_where = [feedback_events.c.kind == "thumb", feedback_events.c.replaced_by.is_(None)]
    if thumbs_since is not None:
        thumbs_where.append(feedback_events.c.recorded_at >= thumbs_since)
    for version, value, n in conn.execute(
        sa.select(feedback_events.c.model_version, feedback_events.c.thumb_value, sa.func.count())
        .where(*thumbs_where)
        .group_by(feedback_events.c.model_version, feedback_events.c.thumb_value)
    ):
        counts = thumbs.setdefault(version, [0, 0])
        counts[0 if value > 0 else 1] += n
    return {
        "interactions": count(interactions),
        "events": {k: by_kind.get(k, 0) for k in ("ranking", "thumb", "pairwise")},
        "comparison_groups_pending": int(groups),
        "comparisons_pending": int(pairs),
        "outbox_backlog": outbox_rows.backlog(conn),
        "thumbs": [(v, *thumbs[v]) for v in sorted(thumbs, key=_version_order)],
    }


def last_export_until(conn: sa.Connection) -> datetime | None:
    """The end of the newest export's window: where "waiting for training" starts."""
    return conn.execute(sa.select(sa.func.max(export_snapshots.c.until))).scalar()
