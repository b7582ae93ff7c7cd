"""The reward service's settings (environment prefix ``FLYWHEEL_REWARD_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class RewardSettings(ServiceSettings):
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
    device: str = Field("auto", description="'auto' (CUDA if present), 'cpu' or 'cuda:N'.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Matmul precision: 'auto' takes bf16 where the device has bf16 units "
        "(GPUs; CPUs with AVX512-BF16 or AMX), else fp32. 'fp32' reproduces the trainer's "
        "scores to float rounding.",
    )
    packed: bool = Field(
        True,
        description="Score batches packed (no padding; shared prompt prefixes computed once) "
        "for Llama-family models; off: padded batches, as the RM library does.",
    )
    version: str = Field("", description="Serve this version at start; empty: the promoted one.")
    max_tokens: int = Field(1024, gt=0, description="Longest prompt + answer scored.")
    max_batch: int = Field(32, gt=0, description="Most answers in one forward pass.")
    batch_window_ms: float = Field(5.0, ge=0, description="How long a batch waits to fill.")
    max_queue: int = Field(512, gt=0, description="Answers waiting past which calls are refused.")
    registry_poll_s: float = Field(
        30.0,
        gt=0,
        description="How often the registry is checked for a new promoted RM "
        "(announcements on Redis switch at once; the poll catches missed ones).",
    )
