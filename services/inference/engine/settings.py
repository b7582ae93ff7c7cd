"""The engine's settings (environment prefix ``FLYWHEEL_ENGINE_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ModelServingSettings


class EngineSettings(ModelServingSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_ENGINE_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="Address the HTTP API binds.")
    http_port: int = Field(8080, description="TGI protocol, OpenAI chat route, /metrics.")
    admin_grpc_host: str = Field(
        "127.0.0.1",
        description="Address the gRPC API listens on: loopback locally; 0.0.0.0 in a pod.",
    )
    admin_grpc_port: int = Field(
        50053, description="ModelAdmin (Reload, CurrentVersion; service credential)."
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="Threads torch computes with; 0: one per core. Lower it when other busy "
        "processes share the cores: a step waits for its slowest thread.",
    )
    fast_decode: bool = Field(
        True,
        description="Decode steps of Llama-family models on CPU through the packed fused step "
        "(services/rlhf/llama_decode.py: same tokens, ~1.6x faster a step here); it keeps a "
        "second, packed copy of the projection weights. Off: transformers' forward.",
    )
    prefix_cache_mb: int = Field(
        64,
        ge=0,
        description="Memory for the keys and values of prompt beginnings already read (the "
        "chat template's system turn, a conversation's earlier turns), so prompts that start "
        "the same way skip them in prefill; per loaded version. SmolLM2-135M in bf16 keeps "
        "~2,900 tokens in 64 MB. 0: off (every prompt is prefilled whole).",
    )
    max_concurrent_requests: int = Field(
        128, gt=0, description="Queued + running requests past which new ones get 429."
    )
    max_batch_size: int = Field(16, gt=0, description="Requests sharing one forward pass.")
    max_prefill_tokens: int = Field(
        4096, gt=0, description="Prompt tokens prefilled together in one pass."
    )
    max_input_tokens: int = Field(1024, gt=0, description="Longest prompt, in tokens.")
    max_total_tokens: int = Field(2048, gt=0, description="Prompt + max_new_tokens, at most.")
    default_max_new_tokens: int = Field(100, gt=0, description="When a request names none.")
    max_best_of: int = Field(4, gt=0, description="Largest TGI best_of / OpenAI n.")
    max_stop_sequences: int = Field(4, ge=0, description="Most stop sequences per request.")
    max_body_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest HTTP request body, in bytes (413 past it)."
    )
    stall_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Liveness turns red when requests wait or run but the scheduler has made "
        "no step for this long (longer than the slowest prefill of max_prefill_tokens).",
    )
