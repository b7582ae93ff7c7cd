"""The gateway's settings (environment prefix ``FLYWHEEL_GATEWAY_``).

Paths that live under the data directory (the API key file, the spool) default to ``None``
and are resolved by the ``resolved_*`` properties, as the feedback service does for its
database URL: the default follows ``FLYWHEEL_DATA_DIR`` however the settings were built.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

MiB = 1024 * 1024


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_GATEWAY_", extra="ignore")

    http_host: str = Field(
        "127.0.0.1",
        description="Address the public API listens on; 0.0.0.0 in a container.",
    )
    http_port: int = Field(8000, description="Public OpenAI-compatible API (and /metrics).")
    engine_url: str = Field(
        "http://127.0.0.1:8080",
        description="Base URL of the policy engine (the built-in one, TGI or vLLM).",
    )
    feedback_grpc_target: str = Field(
        "127.0.0.1:50051",
        description="gRPC target of the feedback service (RecordInteraction).",
    )
    reward_grpc_target: str = Field(
        "127.0.0.1:50052",
        description="gRPC target of the reward service (Score, for best_of reranking).",
    )
    api_keys_file: Path | None = Field(
        None,
        description="JSON file of API keys (ids and hashes only). Unset: "
        "<data_dir>/api-keys.json. Re-read when it changes, so keys can be added while the "
        "gateway runs.",
    )
    spool_path: Path | None = Field(
        None,
        description="SQLite spool of answers not yet accepted by the feedback service. Unset: "
        "<data_dir>/gateway-spool.sqlite3. Must be on a persistent volume of its own per "
        "replica: records waiting there during a feedback outage are lost with it.",
    )
    rate_limit_requests_per_minute: float = Field(
        60.0,
        gt=0,
        description="Sustained requests per minute per API key (a key's record may override).",
    )
    rate_limit_burst: int = Field(
        20,
        ge=1,
        description="Requests a key may make at once after being idle (a key's record may "
        "override).",
    )
    max_body_bytes: int = Field(1 * MiB, gt=0, description="Largest HTTP request body.")
    max_messages: int = Field(100, gt=0, description="Most messages in one chat request.")
    max_n: int = Field(8, ge=1, description="Most candidates (`n`) in one chat request.")
    default_max_tokens: int = Field(
        100,
        ge=1,
        description="max_tokens sent to the engine when a request names none (always sent, so "
        "the recorded value is the one in effect whatever the engine's own default).",
    )
    recorder_batch: int = Field(
        64, gt=0, description="Most spooled records sent to the feedback service in one round."
    )
    recorder_retry_initial_s: float = Field(
        0.5,
        gt=0,
        description="First wait after the feedback service failed; doubles per failure.",
    )
    recorder_retry_max_s: float = Field(
        30.0, gt=0, description="Longest wait between attempts while the feedback service is down."
    )
    revocation_publish_s: float = Field(
        5.0,
        gt=0,
        description="How often the key file's revoked ids are published to Redis for the "
        "feedback service (a revocation by `flywheel keys revoke` is published at once).",
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Longest a chat request may take end to end (engine included)."
    )
    canary_refresh_s: float = Field(
        5.0,
        gt=0,
        description="How often the engine's canary (version and share of API keys) is re-read.",
    )

    # --- the chat page and its status view ------------------------------------------------
    feedback_public_url: str = Field(
        "",
        description="The feedback service's HTTP API as browsers reach it: the chat page sends "
        "thumbs and rankings there, and the feedback service's CORS origins must include this "
        "gateway's origin. Empty: the page's own origin (an Ingress that routes /v1/feedback "
        "to the feedback service, as the Helm chart's does).",
    )
    trainer_broker_url: str | None = Field(
        None,
        description="The trainer's Celery broker, asked for recent runs. Unset: "
        "FLYWHEEL_REDIS_URL (as the trainer's own default).",
    )
    trainer_control_queue: str = Field(
        "control", description="The trainer's control queue (answers status questions)."
    )
    status_runs: int = Field(5, ge=1, le=50, description="Trainer runs in the status view.")
    status_timeout_s: float = Field(
        3.0, gt=0, description="How long the status view waits for each service."
    )
    status_cache_s: float = Field(
        5.0, ge=0, description="How long one status answer is reused (open pages poll it)."
    )

    @property
    def resolved_api_keys_file(self) -> Path:
        if self.api_keys_file is not None:
            return self.api_keys_file
        return (self.data_dir / "api-keys.json").resolve()

    @property
    def resolved_spool_path(self) -> Path:
        if self.spool_path is not None:
            return self.spool_path
        return (self.data_dir / "gateway-spool.sqlite3").resolve()
