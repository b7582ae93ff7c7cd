"""The engine on loopback, serving tiny random policies from a temporary registry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest

from services.inference.engine.server import EngineServer
from tests.harness import internal_channel
from tests.inference.inference_helpers import engine_settings


@dataclass
class RunningEngine:
    server: EngineServer
    http: httpx.Client
    admin: grpc.Channel

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.http.port}"


@pytest.fixture
def engine_overrides() -> dict:
    """Settings a test module changes (override this fixture)."""
    return {}


@pytest.fixture
def engine(policy_store, redis_url, engine_overrides) -> Iterator[RunningEngine]:
    server = EngineServer(engine_settings(policy_store, redis_url, **engine_overrides))
    server.start()
    http = httpx.Client(base_url=f"http://127.0.0.1:{server.http.port}", timeout=60)
    admin = internal_channel(f"127.0.0.1:{server.admin.port}")
    try:
        yield RunningEngine(server, http, admin)
    finally:
        http.close()
        admin.close()
        server.stop()
