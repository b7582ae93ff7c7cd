"""TGI's and OpenAI's response bodies as the engine sends them, for its OpenAPI document (so
clients' generators and schema checks know the shape; the routes build the JSON directly)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class GenerateResponse(BaseModel):
    generated_text: str
    details: dict[str, Any] | None = None  # with `details: true`: TGI's finish reason, tokens...


class Info(BaseModel):
    model_id: str
    model_version: str | None
    # During a canary: the version loaded beside the promoted one, and the share of API keys
    # the gateway sends to it (0.0 without a canary).
    canary_version: str | None
    canary_share: float
    model_sha: str | None
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    max_batch_size: int
    max_client_batch_size: int
    validation_workers: int
    router: str
    version: str
    sha: str | None
    docker_label: str | None


class ChatCompletion(BaseModel):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[dict[str, Any]]
    usage: dict[str, int]
