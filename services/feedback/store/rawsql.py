"""Hand-written SQL on the DBAPI cursor, for the writer's hot path.

Building and executing a SQLAlchemy Core statement costs ~100 us of Python per statement, and
accepting one vote takes 6-9 statements: measured, that capped ingest at a few hundred events
per second with SQLite itself busy 6% of the time (docs/benchmarks.md). The hot path therefore
runs fixed SQL strings straight on the driver's cursor, inside the transaction SQLAlchemy
opened, and converts the two column types that need it (JSON, UTC datetimes) itself, in the
same formats SQLAlchemy uses, so everything else (migrations, exports, reads) keeps reading the
rows through SQLAlchemy.

SQL is written with ``:name`` parameters (sqlite3's named style) and rewritten once to
``%(name)s`` for psycopg.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic_core import to_json

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@functools.cache
def _pyformat(sql: str) -> str:
    return _NAMED.sub(r"%(\1)s", sql)


def insert_sql(table: sa.Table, *, omit: Sequence[str] = ()) -> str:
    """``INSERT INTO table (every column) VALUES (:every column)``, built from the table's
    definition (so the column list lives in one place); ``omit`` leaves columns to their
    defaults (NULL, autoincrement)."""
    names = [column.name for column in table.columns if column.name not in omit]
    return (
        f"INSERT INTO {table.name} ({', '.join(names)}) "
        f"VALUES ({', '.join(':' + name for name in names)})"
    )


@functools.cache
def in_list(prefix: str, count: int) -> str:
    """``:p0, :p1, ...`` for an IN list of ``count`` values (see :func:`in_params`)."""
    return ", ".join(f":{prefix}{i}" for i in range(count))


def in_params(prefix: str, values: Sequence[Any]) -> dict[str, Any]:
    return {f"{prefix}{i}": v for i, v in enumerate(values)}


@functools.cache
def _psycopg_json():
    from psycopg.types.json import Json  # imported only where PostgreSQL is used

    return Json


@functools.lru_cache(maxsize=8)  # a write batch stamps all its rows with one time
def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


@functools.lru_cache(maxsize=8)
def _sqlite_time(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME format, so its readers parse it and ranges compare right.
    return _naive_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")


class Sent:
    """A query sent on its own cursor whose rows are read later (``RawSql.send``)."""

    def __init__(self, cursor) -> None:
        self._cursor = cursor

    def rows(self) -> list[tuple]:
        return self._cursor.fetchall()


class RawSql:
    """Statements on one SQLAlchemy connection's DBAPI cursor (its open transaction)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.sqlite = conn.dialect.name == "sqlite"
        self._dbapi = conn.connection.dbapi_connection
        self._cursor = self._dbapi.cursor()
        if not self.sqlite:
            self._json_param = _psycopg_json()

    def send(self, sql: str, params: dict[str, Any] | None = None) -> Sent:
        """Run a query whose rows are read later. In psycopg's pipeline mode the queries sent
        before the first read share that read's network round trip."""
        cursor = self._dbapi.cursor()
        cursor.execute(sql if self.sqlite else _pyformat(sql), params or {})
        return Sent(cursor)

    def execute(self, sql: str, params: dict[str, Any] | None = None):
        self._cursor.execute(sql if self.sqlite else _pyformat(sql), params or {})
        return self._cursor

    def first(self, sql: str, params: dict[str, Any] | None = None) -> tuple | None:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self.execute(sql, params).fetchall()

    # ---- types, as SQLAlchemy stores them (tables.UtcDateTime, sa.JSON) ----------------------

    def json(self, value: Any) -> Any:
        # pydantic-core's encoder: several times faster than json.dumps on the hot path.
        return to_json(value).decode() if self.sqlite else self._json_param(value)

    def read_json(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    def time(self, value: datetime) -> Any:
        return _sqlite_time(value) if self.sqlite else _naive_utc(value)

    def read_time(self, value: Any) -> datetime:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
        return parsed.replace(tzinfo=UTC)
