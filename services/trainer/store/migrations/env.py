"""Alembic environment: run with a connection handed over by services/common/sql.py."""

from __future__ import annotations

from alembic import context

from services.trainer.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
