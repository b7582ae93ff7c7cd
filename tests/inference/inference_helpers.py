"""Helpers shared by the engine and gateway tests."""

from __future__ import annotations

from services.common.registry import ModelRegistry
from services.inference.engine.settings import EngineSettings


def engine_settings(registry: ModelRegistry, redis_url: str, **overrides) -> EngineSettings:
    values = dict(
        FLYWHEEL_MODEL_STORE=registry.root,
        FLYWHEEL_REDIS_URL=redis_url,
        http_port=0,
        admin_grpc_port=0,
        device="cpu",
        precision="fp32",  # exact comparisons with transformers' generate
        drain_timeout_s=2,
        registry_poll_s=0.5,
    )
    values.update(overrides)
    return EngineSettings(**values)
