"""Engines for the store, and migrating it to the current schema.

SQLite (the default, one file under the data folder) runs in WAL mode with
``synchronous=FULL``: a commit returns only once the WAL is fsynced, so an acknowledged
event survives a power cut, not just a process crash. Writes are serialised by one writer
thread (see writer.py), which opens its transactions with ``BEGIN IMMEDIATE`` so it never
has to upgrade a read lock; readers use plain deferred transactions and never block it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def is_sqlite(url: str | sa.URL) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def _create_private_file(url: str | sa.URL) -> None:
    """Create a SQLite file readable by its owner only (0600) before SQLite opens it: it holds
    prompts and answers. SQLite gives its -wal and -shm files the database file's mode."""
    path = sa.make_url(url).database
    if not path or path == ":memory:":
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.fchmod(fd, 0o600)  # a file made before this rule existed is tightened too
    os.close(fd)


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
        cursor.execute("PRAGMA journal_mode=WAL")
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


def _alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` (default: the newest schema)."""
    _run_alembic(url, command.upgrade, revision)


def downgrade(url: str, revision: str) -> None:
    _run_alembic(url, command.downgrade, revision)


def _run_alembic(url: str, step: Callable[[Config, str], None], revision: str) -> None:
    """Run an Alembic command in one transaction on a writer connection of its own."""
    engine = make_engine(url, writer=True)
    try:
        with engine.begin() as connection:
            step(_alembic_config(connection), revision)
    finally:
        engine.dispose()


def schema_is_current(engine: sa.Engine) -> bool:
    """True when the database is at the newest migration (the service refuses to run otherwise)."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
    return current == head


class Checkpointer:
    """Copies SQLite's write-ahead log into the database file in the background.

    The writer never checkpoints (``wal_autocheckpoint=0``): a checkpoint inside a commit would
    stall every request of that batch. Here PASSIVE checkpoints, which never block the writer or
    readers, run on their own connection and thread (SQLite releases the GIL meanwhile). They
    run often so that each copies little: a big copy's fsync holds up the writer's next WAL
    fsync on the same disk (measured: 1 s and 5 s intervals gave 100-450 ms p99 spikes under
    load; 0.25 s did not).
    """

    def __init__(self, url: str, interval_s: float = 0.25) -> None:
        self._path = sa.make_url(url).database if is_sqlite(url) else None
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)

    def start(self) -> None:
        if self._path:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stopping.wait(self._interval_s):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.warning("WAL checkpoint failed; will retry", exc_info=True)
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # a compact file on a clean stop
        finally:
            connection.close()
