"""The outbox table: events waiting to be announced on the Redis stream."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from services.feedback.store.tables import outbox


@dataclass(frozen=True)
class Pending:
    id: int
    event_id: str
    message: dict[str, str]


def oldest(conn: sa.Connection, limit: int) -> list[Pending]:
    rows = conn.execute(
        sa.select(outbox.c.id, outbox.c.event_id, outbox.c.message)
        .order_by(outbox.c.id)
        .limit(limit)
    )
    return [Pending(*row) for row in rows]


def remove(conn: sa.Connection, ids: list[int]) -> None:
    conn.execute(outbox.delete().where(outbox.c.id.in_(ids)))


def backlog(conn: sa.Connection) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one()
