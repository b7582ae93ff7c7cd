"""The run store's tables (the migration in migrations/versions creates the same).

A run is one turn of the flywheel; its stages are rows keyed by (run, stage name), so a stage
that finished is never redone, whatever redelivers the task. ``active`` is 1 while a run is
pending or running and NULL after: a unique index on it admits one active run at a time
(NULLs never collide), so two triggers at once give one run.
"""

from __future__ import annotations

import sqlalchemy as sa

from services.common.sql import UtcDateTime

metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("trigger", sa.String(200), nullable=False),
    # pending | running | succeeded | rejected | failed | cancelled
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("active", sa.Integer, nullable=True, unique=True),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    # The lease's fencing token: a worker writes only while the run carries its token.
    sa.Column("fence", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("heartbeat_at", UtcDateTime(), nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    # The export window end this run trained up to: the next run's `since`.
    sa.Column("snapshot_until", UtcDateTime(), nullable=True),
)

stages = sa.Table(
    "stages",
    metadata,
    sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("name", sa.String(32), primary_key=True),
    # running | done | rejected | failed | cancelled
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("started_at", UtcDateTime(), nullable=True),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    # What the stage produced (versions, paths, measurements), as JSON.
    sa.Column("outputs", sa.JSON, nullable=False, default=dict),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
)

# Rollbacks the watch made, so each promoted version is judged (and rolled back) once.
rollbacks = sa.Table(
    "rollbacks",
    metadata,
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("to_version", sa.String(32), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)
