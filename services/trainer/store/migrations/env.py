"""Alembic environment: run on the connection handed over by services/common/sql.py."""

from __future__ import annotations

from services.common.sql import run_migrations_on_handed_connection
from services.trainer.store.tables import metadata

run_migrations_on_handed_connection(metadata)
