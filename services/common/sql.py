"""SQL engines and Alembic migrations, shared by the services that keep a database (the
feedback store, the trainer's run store).

SQLite (the default, one file under the data folder) runs in WAL mode with
``synchronous=FULL``: a commit returns only once the WAL is fsynced, so an acknowledged write
survives a power cut, not just a process crash. A ``writer=True`` engine opens its transactions
with ``BEGIN IMMEDIATE`` so it never has to upgrade a read lock; readers use plain deferred
transactions and never block it. PostgreSQL is used by URL.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory


class UtcDateTime(sa.TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out; naive UTC in the column."""

    impl = sa.DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UtcDateTime needs an aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def is_sqlite(url: str | sa.URL) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def _create_private_file(url: str | sa.URL) -> None:
    """Create a SQLite file readable by its owner only (0600) before SQLite opens it: it holds
    prompts and answers, or run records. SQLite gives its -wal and -shm files the database
    file's mode."""
    path = sa.make_url(url).database
    if not path or path == ":memory:":
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.fchmod(fd, 0o600)  # a file made before this rule existed is tightened too
    os.close(fd)


def _use_wal(cursor, timeout_s: float = 30.0) -> None:
    """Switch the file to WAL mode (stored in the file, so only its first opener changes it).
    Processes that open a new file together race to switch it, and SQLite answers the losers
    "database is locked" at once, without waiting for the busy timeout: retry until the
    winner's switch is done."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_engine(url: str, *, writer: bool = False, pool_size: int = 8) -> sa.Engine:
    """An engine for readers, or (``writer=True``) for the single writer connection."""
    if not is_sqlite(url):
        return sa.create_engine(
            url,
            pool_size=1 if writer else pool_size,
            max_overflow=0 if writer else 4,
            pool_pre_ping=True,
        )
    _create_private_file(url)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (needed for
        # SAVEPOINT and BEGIN IMMEDIATE; see SQLAlchemy's pysqlite notes).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # 1 KiB pages (for a new file; an existing one keeps its size): a vote dirties a few
        # leaf pages of indexes with random keys, and every commit writes each dirty page whole
        # to the WAL and fsyncs it. Measured: 29 KiB of WAL per event at 4 KiB pages, 10 KiB at
        # 1 KiB, with fewer commit and checkpoint stalls (docs/benchmarks.md).
        cursor.execute("PRAGMA page_size=1024")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # 64 MiB of page cache per connection instead of SQLite's 2 MiB: the indexes a vote
        # touches stay in memory as the store grows.
        cursor.execute("PRAGMA cache_size=-65536")
        if writer:
            # The writer never checkpoints itself (a checkpoint inside a commit stalls every
            # request of that batch); the store's Checkpointer thread does it in the background.
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql(begin)

    return engine


def run_migrations_on_handed_connection(metadata: sa.MetaData) -> None:
    """The body of a migrations folder's env.py: run Alembic on the connection that
    :class:`Migrations` handed over (SQLite in batch mode: it cannot ALTER most things, batch
    mode rebuilds tables when a migration needs it)."""
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


# The PostgreSQL advisory lock every Flywheel migration holds (any fixed 64-bit number; the
# locks are per server, so migrations of the feedback and trainer databases take turns too).
MIGRATION_LOCK_KEY = 0x466C79776865656C  # "Flywheel"


class Migrations:
    """One database's Alembic scripts (``directory`` holds env.py and versions/); env.py runs
    on the connection handed over in ``config.attributes["connection"]``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def migrate(self, url: str, revision: str = "head") -> None:
        """Bring the database to ``revision`` (default: the newest schema)."""
        self._run(url, command.upgrade, revision)

    def downgrade(self, url: str, revision: str) -> None:
        self._run(url, command.downgrade, revision)

    def schema_is_current(self, engine: sa.Engine) -> bool:
        """True when the database is at the newest migration (services refuse to run
        otherwise)."""
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        head = ScriptDirectory.from_config(self._config(None)).get_current_head()
        return current == head

    def _config(self, connection: sa.Connection | None) -> Config:
        config = Config()
        config.set_main_option("script_location", str(self.directory))
        config.attributes["connection"] = connection
        return config

    def _run(self, url: str, step: Callable[[Config, str], None], revision: str) -> None:
        """Run an Alembic command in one transaction on a writer connection of its own.

        Processes that start together (a Deployment's replicas, the trainer's three processes)
        all migrate: on PostgreSQL their DDL would block on each other and deadlock, so the
        transaction first takes an advisory lock, held until it commits; the next one then
        finds the schema current and does nothing. SQLite's ``BEGIN IMMEDIATE`` already admits
        one writer at a time."""
        engine = make_engine(url, writer=True)
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                step(self._config(connection), revision)
        finally:
            engine.dispose()
