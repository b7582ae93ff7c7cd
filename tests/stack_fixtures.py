"""The whole public API on loopback, for the end-to-end and gateway tests: real Redis
(database 5), the real feedback service in-process (which can be stopped and started again on
the same ports), and `stack`: the gateway in front of the real engine, reward and feedback
services. Registered for the whole suite in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from services.common.api_keys import ApiKeyStore
from services.inference.engine.server import EngineServer
from services.inference.gateway.server import GatewayServer
from services.inference.gateway.settings import GatewaySettings
from services.reward.server import RewardServer
from services.reward.settings import RewardSettings
from tests.harness import (
    FeedbackService,
    add_tiny_reward_model,
    empty_redis_db,
)
from tests.inference.inference_helpers import engine_settings

GATEWAY_REDIS_DB = 5


@pytest.fixture
def gateway_redis_url(redis_url) -> str:
    """The test Redis, database 5, emptied."""
    return empty_redis_db(redis_url, GATEWAY_REDIS_DB)


@pytest.fixture
def feedback(tmp_path, gateway_redis_url) -> Iterator[FeedbackService]:
    service = FeedbackService.on_sqlite(
        tmp_path / "feedback", gateway_redis_url, drain_timeout_s=0.5, revocation_refresh_s=0.2
    ).start()
    try:
        yield service
    finally:
        service.close()


@dataclass
class Stack:
    gateway: GatewayServer
    settings: GatewaySettings
    key: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.http.port}"

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or self.key, max_retries=0)


@pytest.fixture
def engine_server(policy_store, gateway_redis_url) -> Iterator[EngineServer]:
    server = EngineServer(engine_settings(policy_store, gateway_redis_url))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def reward_target(policy_store, tiny_model_dir, gateway_redis_url) -> Iterator[str]:
    add_tiny_reward_model(policy_store, tiny_model_dir, promote=True)
    server = RewardServer(
        RewardSettings(
            FLYWHEEL_MODEL_STORE=policy_store.root,
            FLYWHEEL_REDIS_URL=gateway_redis_url,
            grpc_port=0,
            device="cpu",
            drain_timeout_s=1,
        )
    )
    port = server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


def gateway_settings(tmp_path, redis_url, engine_port, feedback, reward, **overrides):
    values = dict(
        FLYWHEEL_DATA_DIR=tmp_path / "gateway",
        FLYWHEEL_REDIS_URL=redis_url,
        http_port=0,
        engine_url=f"http://127.0.0.1:{engine_port}",
        feedback_grpc_target=feedback,
        reward_grpc_target=reward,
        recorder_retry_initial_s=0.1,
        recorder_retry_max_s=0.5,
        drain_timeout_s=2,
    )
    return GatewaySettings(**{**values, **overrides})


@pytest.fixture
def gateway_overrides() -> dict:
    return {}


@pytest.fixture
def stack(
    tmp_path, gateway_redis_url, engine_server, feedback, reward_target, gateway_overrides
) -> Iterator[Stack]:
    settings = gateway_settings(
        tmp_path,
        gateway_redis_url,
        engine_server.http.port,
        feedback.target,
        reward_target,
        **gateway_overrides,
    )
    settings.resolved_api_keys_file.parent.mkdir(parents=True, exist_ok=True)
    key = ApiKeyStore(settings.resolved_api_keys_file).ensure_dev_key(tmp_path / "dev-api-key")
    gateway = GatewayServer(settings)
    gateway.start()
    yield Stack(gateway, settings, key)
    gateway.stop()
