"""The outbox table: events waiting to be announced on the Redis stream."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from services.feedback.store.rawsql import RawSql, in_list, in_params
from services.feedback.store.tables import outbox


@dataclass(frozen=True)
class Pending:
    id: int
    event_id: str
    message: dict[str, str]


# Hand-written SQL (rawsql.py): the relay runs these for every batch of events it delivers.


def oldest(conn: sa.Connection, limit: int) -> list[Pending]:
    sql = RawSql(conn)
    rows = sql.all(
        "SELECT id, event_id, message FROM outbox ORDER BY id LIMIT :limit", {"limit": limit}
    )
    return [Pending(id, event_id, sql.read_json(message)) for id, event_id, message in rows]


def remove(conn: sa.Connection, ids: list[int]) -> None:
    if ids:
        RawSql(conn).execute(
            f"DELETE FROM outbox WHERE id IN ({in_list('i', len(ids))})", in_params("i", ids)
        )


def backlog(conn: sa.Connection) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one()
