"""The tables, as SQLAlchemy Core metadata (the migrations in ``migrations/`` create them).

Rows that feedback refers to are never edited in place: interactions are immutable, a vote
that replaces an earlier one marks the earlier row ``replaced_by`` and adds a new row, and a
comparison that changes gets a new revision while the old one is marked ``superseded_at``.
That is what lets an export window be replayed exactly later (see export.py).

Times are stored as naive UTC and read back as aware UTC (:class:`UtcDateTime`), so SQLite
and PostgreSQL behave the same.
"""

from __future__ import annotations

import sqlalchemy as sa

from services.common.sql import UtcDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = sa.String(64)
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants a BIGINT for a queue.
BigAutoId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


interactions = sa.Table(
    "interactions",
    metadata,
    sa.Column("response_id", ID, primary_key=True),
    sa.Column("conversation_id", ID, nullable=False),
    sa.Column("candidate_group", ID, nullable=False),
    sa.Column("candidate_index", sa.Integer, nullable=False),
    sa.Column("candidate_count", sa.Integer, nullable=False),
    sa.Column("messages", sa.JSON, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("model_version", ID, nullable=False),
    sa.Column("sampling", sa.JSON, nullable=False),
    sa.Column("api_key_id", ID, nullable=False),
    sa.Column("feedback_token_hash", ID, nullable=False),
    # Fingerprint of everything above, so a RecordInteraction retry is recognised as the same
    # record (and a different record under a reused response_id is refused).
    sa.Column("content_sha256", ID, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("candidate_group", "candidate_index"),
    sa.Index(None, "model_version"),
)

feedback_events = sa.Table(
    "feedback_events",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    # The API key the vote counts for: the key that received the answers (also when the
    # client authenticated with the group's feedback token).
    sa.Column("rater_key_id", ID, nullable=False),
    sa.Column("via", sa.String(16), nullable=False),  # "api_key" or "feedback_token"
    sa.Column("client_event_id", sa.String(128)),
    # Fingerprint of the request, so a retry under the same client_event_id is told apart from
    # a different request that reuses it.
    sa.Column("request_sha256", ID, nullable=False),
    # What the vote is about: one per (rater, kind, subject) is current.
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("candidate_group", ID, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    # Thumbs only, denormalised for the thumbs-up ratio per model version.
    sa.Column("thumb_value", sa.SmallInteger),
    sa.Column("model_version", ID),
    sa.Column("replaces", ID),
    sa.Column("replaced_by", ID),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("rater_key_id", "client_event_id"),
    sa.Index(None, "recorded_at"),
    sa.Index(None, "candidate_group"),
    # The rule "one current vote per (key, subject, kind)", enforced by the database so that it
    # also holds between replicas.
    sa.Index(
        "uq_feedback_events_current_vote",
        "rater_key_id",
        "kind",
        "subject",
        unique=True,
        sqlite_where=sa.text("replaced_by IS NULL"),
        postgresql_where=sa.text("replaced_by IS NULL"),
    ),
)

comparisons = sa.Table(
    "comparisons",
    metadata,
    # One immutable revision.
    sa.Column("id", ID, primary_key=True),
    # Stable across revisions: one per (source, rater, subject); exported as comparison_id.
    sa.Column("comparison_id", ID, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("rater_key_id", ID, nullable=False),
    sa.Column("candidate_group", ID, nullable=False),
    sa.Column("candidates", sa.JSON, nullable=False),  # response ids, in candidate order
    sa.Column("pairs", sa.JSON, nullable=False),  # [[better, worse], ...] indexes into candidates
    sa.Column("pair_count", sa.Integer, nullable=False),
    sa.Column("event_id", ID, nullable=False),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.Column("superseded_at", UtcDateTime),
    sa.Index(None, "recorded_at"),
    sa.Index(None, "event_id"),
    sa.Index(
        "uq_comparisons_current_revision",
        "comparison_id",
        unique=True,
        sqlite_where=sa.text("superseded_at IS NULL"),
        postgresql_where=sa.text("superseded_at IS NULL"),
    ),
)

# The transactional outbox: written in the same transaction as the event, deleted once the
# event is on the Redis stream.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigAutoId, primary_key=True, autoincrement=True),
    sa.Column("event_id", ID, nullable=False),
    sa.Column("message", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

export_snapshots = sa.Table(
    "export_snapshots",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("since", UtcDateTime),
    sa.Column("until", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("total_groups", sa.Integer, nullable=False),
    sa.Column("total_pairs", sa.Integer, nullable=False),
    # SHA-256 over the exported revision ids in export order: replaying the window later must
    # give the same digest.
    sa.Column("content_sha256", ID, nullable=False),
    sa.Index(None, "created_at"),
)
