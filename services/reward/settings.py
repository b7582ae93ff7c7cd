"""The reward service's settings (environment prefix ``FLYWHEEL_REWARD_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ModelServingSettings


class RewardSettings(ModelServingSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_REWARD_", extra="ignore")

    grpc_host: str = Field(
        "127.0.0.1",
        description="Address the gRPC API listens on: loopback locally; 0.0.0.0 in a pod.",
    )
    grpc_port: int = Field(50052, description="RewardService and ModelAdmin (service credential).")
    metrics_host: str = Field(
        "127.0.0.1", description="Address /metrics listens on: loopback locally; 0.0.0.0 in a pod."
    )
    metrics_port: int = Field(9052, description="Prometheus /metrics.")
    packed: bool = Field(
        True,
        description="Score batches packed (no padding; shared prompt prefixes computed once) "
        "for Llama-family models; off: padded batches, as the RM library does.",
    )
    max_tokens: int = Field(1024, gt=0, description="Longest prompt + answer scored.")
    max_batch: int = Field(32, gt=0, description="Most answers in one forward pass.")
    batch_window_ms: float = Field(5.0, ge=0, description="How long a batch waits to fill.")
    max_queue: int = Field(512, gt=0, description="Answers waiting past which calls are refused.")
