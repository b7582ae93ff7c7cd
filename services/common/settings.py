"""Typed settings from the environment, shared by every service.

Each service subclasses :class:`ServiceSettings` with its own prefix
(``FLYWHEEL_FEEDBACK_``, ``FLYWHEEL_REWARD_``, ...). The few settings that every
process must agree on (where the data lives, which Redis) are read from
project-wide names (``FLYWHEEL_DATA_DIR``, ``FLYWHEEL_REDIS_URL``, ...) whatever
the service's prefix, so one environment configures the whole local stack and
the Helm chart sets them once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.service_auth import resolve_service_token

LogFormat = Literal["json", "text"]


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclasses set ``env_prefix`` for their own fields."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore", populate_by_name=True)

    # An explicit alias makes pydantic-settings ignore the subclass's prefix for these.
    data_dir: Path = Field(
        Path("data"),
        validation_alias="FLYWHEEL_DATA_DIR",
        description="Root of local state: model store, SQLite file, spools, logs.",
    )
    model_store: Path | None = Field(
        None,
        validation_alias="FLYWHEEL_MODEL_STORE",
        description="Model registry folder; defaults to <data_dir>/models.",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias="FLYWHEEL_REDIS_URL",
        description="Redis for streams, pub/sub, locks and rate limits.",
    )
    log_level: str = Field(
        "INFO", validation_alias="FLYWHEEL_LOG_LEVEL", description="Python logging level name."
    )
    log_format: LogFormat = Field(
        "json",
        validation_alias="FLYWHEEL_LOG_FORMAT",
        description="'json' (one object a line, for log shippers) or 'text' (for people).",
    )

    service_token: SecretStr | None = Field(
        None,
        validation_alias="FLYWHEEL_SERVICE_TOKEN",
        description="The service credential internal gRPC calls present and servers check "
        "(services/common/service_auth.py). Unset: read from service_token_file.",
    )
    service_token_file: Path | None = Field(
        None,
        validation_alias="FLYWHEEL_SERVICE_TOKEN_FILE",
        description="File holding the service credential; defaults to <data_dir>/service-token, "
        "created (0600) with a random token if missing.",
    )

    # No alias: read under each service's own prefix (FLYWHEEL_FEEDBACK_DRAIN_TIMEOUT_S, ...).
    drain_timeout_s: float = Field(
        10.0, ge=0, description="Grace period on SIGTERM for requests in flight."
    )

    def resolved_service_token(self) -> str:
        """The service credential (reads or creates the token file; see service_auth)."""
        value = self.service_token.get_secret_value() if self.service_token else None
        path = self.service_token_file or self.data_dir / "service-token"
        return resolve_service_token(value, path)

    @property
    def model_store_dir(self) -> Path:
        return self.model_store if self.model_store is not None else self.data_dir / "models"


class ModelServingSettings(ServiceSettings):
    """Settings of a service that serves a registry version (the engine, the reward service),
    read under the subclass's prefix (FLYWHEEL_ENGINE_DEVICE, FLYWHEEL_REWARD_DEVICE, ...)."""

    device: str = Field("auto", description="'auto' (CUDA if present), 'cpu' or 'cuda:N'.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Matmul precision: 'auto' takes bf16 where the device has bf16 units "
        "(GPUs; CPUs with AVX512-BF16 or AMX), else fp32 ('fp32' reproduces the trainer's "
        "numbers to float rounding).",
    )
    version: str = Field("", description="Serve this version at start; empty: the promoted one.")
    registry_poll_s: float = Field(
        30.0,
        gt=0,
        description="How often the registry is checked for a new promoted version "
        "(announcements on Redis switch at once; the poll catches missed ones).",
    )
