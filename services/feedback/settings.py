"""The feedback service's settings (environment prefix ``FLYWHEEL_FEEDBACK_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class FeedbackSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_FEEDBACK_", extra="ignore")

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the store. Unset: SQLite at <data_dir>/feedback.sqlite3. "
        "In a cluster: postgresql+psycopg://user:password@host/db.",
    )
    migrate_on_start: bool = Field(
        True,
        description="Bring the schema up to date at start. Turn off when a Helm hook (or an "
        "operator) runs `python -m services.feedback migrate` before the pods start.",
    )
    http_host: str = Field(
        "127.0.0.1",
        description="Address the HTTP API listens on: loopback locally; 0.0.0.0 in a pod.",
    )
    http_port: int = Field(8001, description="HTTP API for clients (and /metrics).")
    grpc_host: str = Field(
        "127.0.0.1",
        description="Address the gRPC API listens on: loopback locally; 0.0.0.0 in a pod.",
    )
    grpc_port: int = Field(50051, description="gRPC API for other services (service credential).")
    feedback_ttl_s: int = Field(
        7 * 24 * 3600, gt=0, description="How long after serving an answer it may be rated."
    )
    max_body_bytes: int = Field(64 * 1024, gt=0, description="Largest HTTP request body.")
    max_comment_chars: int = Field(2000, ge=0, description="Longest thumb comment.")
    max_candidates: int = Field(16, ge=2, description="Most answers one ranking may order.")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call the HTTP API (the chat page rates answers "
        'with the feedback token), e.g. ["http://localhost:8000"]. Empty: no CORS headers.',
    )
    revocation_refresh_s: float = Field(
        2.0,
        gt=0,
        description="How often the revoked API keys are re-read from Redis: a revoked key "
        "(and its feedback tokens) is refused within this long of its revocation.",
    )
    export_page_size: int = Field(256, gt=0, description="Default comparison groups per page.")
    export_max_page_size: int = Field(2048, gt=0, description="Cap on a requested page size.")
    write_max_batch: int = Field(256, gt=0, description="Most requests in one group commit.")
    outbox_batch: int = Field(500, gt=0, description="Events per outbox relay round trip.")
    outbox_gather_s: float = Field(
        0.05,
        ge=0,
        description="Pause between relay rounds under load, so one Redis round trip carries "
        "the events of many commits (the most an event waits before it is on the stream).",
    )
    stream_maxlen: int = Field(
        1_000_000, gt=0, description="Approximate cap on the Redis stream's length."
    )
    outbox_dedupe_ttl_s: int = Field(
        7 * 24 * 3600,
        gt=0,
        description="How long Redis remembers a delivered event (so a relay retry is skipped).",
    )
    checkpoint_interval_s: float = Field(
        0.25,
        gt=0,
        description="SQLite only: how often the WAL is copied into the database file (small "
        "frequent copies keep commit latency flat; see store/database.py Checkpointer).",
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'feedback.sqlite3').resolve()}"
