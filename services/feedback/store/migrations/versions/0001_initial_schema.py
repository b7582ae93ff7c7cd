"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Times are naive UTC (tables.UtcDateTime converts).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("comparison_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("rater_key_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_group", sa.String(length=64), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("pairs", sa.JSON(), nullable=False),
        sa.Column("pair_count", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("superseded_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparisons")),
    )
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_comparisons_recorded_at"), ["recorded_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_comparisons_event_id"), ["event_id"], unique=False)
        batch_op.create_index(
            "uq_comparisons_current_revision",
            ["comparison_id"],
            unique=True,
            sqlite_where=sa.text("superseded_at IS NULL"),
            postgresql_where=sa.text("superseded_at IS NULL"),
        )

    op.create_table(
        "export_snapshots",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=True),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("total_groups", sa.Integer(), nullable=False),
        sa.Column("total_pairs", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_snapshots")),
    )
    with op.batch_alter_table("export_snapshots", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_export_snapshots_created_at"), ["created_at"], unique=False
        )

    op.create_table(
        "feedback_events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("rater_key_id", sa.String(length=64), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("client_event_id", sa.String(length=128), nullable=True),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("candidate_group", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("thumb_value", sa.SmallInteger(), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("replaces", sa.String(length=64), nullable=True),
        sa.Column("replaced_by", sa.String(length=64), nullable=True),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback_events")),
        sa.UniqueConstraint(
            "rater_key_id",
            "client_event_id",
            name=op.f("uq_feedback_events_rater_key_id_client_event_id"),
        ),
    )
    with op.batch_alter_table("feedback_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_feedback_events_recorded_at"), ["recorded_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_feedback_events_candidate_group"), ["candidate_group"], unique=False
        )
        batch_op.create_index(
            "uq_feedback_events_current_vote",
            ["rater_key_id", "kind", "subject"],
            unique=True,
            sqlite_where=sa.text("replaced_by IS NULL"),
            postgresql_where=sa.text("replaced_by IS NULL"),
        )

    op.create_table(
        "interactions",
        sa.Column("response_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_group", sa.String(length=64), nullable=False),
        sa.Column("candidate_index", sa.Integer(), nullable=False),
        sa.Column("candidate_count", sa.Integer(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("sampling", sa.JSON(), nullable=False),
        sa.Column("api_key_id", sa.String(length=64), nullable=False),
        sa.Column("feedback_token_hash", sa.String(length=64), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("response_id", name=op.f("pk_interactions")),
        sa.UniqueConstraint(
            "candidate_group",
            "candidate_index",
            name=op.f("uq_interactions_candidate_group_candidate_index"),
        ),
    )
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_interactions_model_version"), ["model_version"], unique=False
        )

    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("message", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )


def downgrade() -> None:
    op.drop_table("outbox")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_interactions_model_version"))

    op.drop_table("interactions")
    with op.batch_alter_table("feedback_events", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_feedback_events_current_vote",
            sqlite_where=sa.text("replaced_by IS NULL"),
            postgresql_where=sa.text("replaced_by IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_feedback_events_recorded_at"))
        batch_op.drop_index(batch_op.f("ix_feedback_events_candidate_group"))

    op.drop_table("feedback_events")
    with op.batch_alter_table("export_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_export_snapshots_created_at"))

    op.drop_table("export_snapshots")
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_comparisons_current_revision",
            sqlite_where=sa.text("superseded_at IS NULL"),
            postgresql_where=sa.text("superseded_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_comparisons_recorded_at"))
        batch_op.drop_index(batch_op.f("ix_comparisons_event_id"))

    op.drop_table("comparisons")
