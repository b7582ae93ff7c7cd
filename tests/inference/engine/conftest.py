"""The engine on loopback, serving tiny random policies from a temporary registry."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from services.common.registry import ModelRegistry
from services.inference.engine.server import EngineServer
from services.inference.engine.settings import EngineSettings
from tests.conftest import tiny_llama_config


@dataclass
class RunningEngine:
    server: EngineServer
    http: httpx.Client
    admin: grpc.Channel

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.http.port}"


@pytest.fixture
def policy_store(tiny_model_dir, tmp_path) -> ModelRegistry:
    """policy/v0 (promoted) and policy/v1: tiny random Llamas with different weights."""
    registry = ModelRegistry(tmp_path / "models")
    v0 = registry.create_version(
        "policy", lambda f: shutil.copytree(tiny_model_dir, f, dirs_exist_ok=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    other = LlamaForCausalLM(tiny_llama_config(tokenizer))

    def write_v1(folder):
        other.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    registry.create_version("policy", write_v1, parent=v0.version)
    registry.promote("policy", v0.version)
    return registry


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


@pytest.fixture
def engine_overrides() -> dict:
    """Settings a test module changes (override this fixture)."""
    return {}


@pytest.fixture
def engine(policy_store, redis_url, engine_overrides) -> Iterator[RunningEngine]:
    server = EngineServer(engine_settings(policy_store, redis_url, **engine_overrides))
    server.start()
    http = httpx.Client(base_url=f"http://127.0.0.1:{server.http.port}", timeout=60)
    admin = grpc.insecure_channel(f"127.0.0.1:{server.admin.port}")
    try:
        yield RunningEngine(server, http, admin)
    finally:
        http.close()
        admin.close()
        server.stop()
