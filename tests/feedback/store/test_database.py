"""Migrations create exactly the schema the code declares, on SQLite and PostgreSQL, and the
store runs in the durable modes it promises."""

from __future__ import annotations

import stat

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from services.feedback.store import database
from services.feedback.store.tables import metadata


def test_migrations_match_the_tables_and_downgrade_cleanly(database_url):
    database.migrate(database_url)
    engine = database.make_engine(database_url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert database.schema_is_current(engine)
        database.downgrade(database_url, "base")
        assert not database.schema_is_current(engine)
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        database.migrate(database_url)  # and back up again
        assert database.schema_is_current(engine)
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_with_fsync_on_commit(tmp_path):
    url = f"sqlite:///{tmp_path / 'nested' / 'feedback.sqlite3'}"
    database.migrate(url)
    engine = database.make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


def test_sqlite_uses_small_pages_for_new_files(tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    database.migrate(url)
    engine = database.make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 1024
    engine.dispose()


def test_the_sqlite_store_is_readable_by_its_owner_only(tmp_path):
    """It holds every prompt and answer: 0600 like the gateway's spool, WAL files included."""
    fresh = tmp_path / "fresh.sqlite3"
    old = tmp_path / "old.sqlite3"
    old.touch(mode=0o644)
    old.chmod(0o644)
    for path in (fresh, old):
        database.migrate(f"sqlite:///{path}")
        for file in path.parent.glob(path.name + "*"):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
