"""Fixtures for the feedback service: a real store on SQLite and on PostgreSQL, real Redis,
and the service itself serving HTTP and gRPC on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
import redis
import sqlalchemy as sa

from services.common.generated.flywheel.v1 import feedback_pb2_grpc
from services.feedback.server import FeedbackServer
from services.feedback.settings import FeedbackSettings
from tests.harness import internal_channel

TEST_POSTGRES_URL = os.environ.get(
    "FLYWHEEL_TEST_POSTGRES_URL", "postgresql+psycopg://flywheel@127.0.0.1:5499/flywheel"
)


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL (``make test`` starts one); a clear failure if it is not there."""
    try:
        psycopg.connect(_libpq(TEST_POSTGRES_URL), connect_timeout=2).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"no PostgreSQL at {TEST_POSTGRES_URL} ({exc}); run the tests with `make test`")
    return TEST_POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    """An empty database of each kind: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
        return
    server = request.getfixturevalue("postgres_url")
    name = f"fb_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(server), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(_libpq(server), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def feedback_redis_url(redis_url) -> str:
    """The test Redis, database 3, emptied: the events stream starts empty."""
    url = redis_url.rsplit("/", 1)[0] + "/3"
    redis.Redis.from_url(url).flushdb()
    return url


@dataclass
class RunningService:
    server: FeedbackServer
    http: httpx.Client
    stub: feedback_pb2_grpc.FeedbackServiceStub
    redis: redis.Redis

    @property
    def core(self):
        return self.server.core


def make_settings(database_url: str, redis_url: str, tmp_path, **overrides) -> FeedbackSettings:
    return FeedbackSettings(
        database_url=database_url,
        FLYWHEEL_REDIS_URL=redis_url,
        FLYWHEEL_DATA_DIR=tmp_path,
        http_host="127.0.0.1",
        http_port=0,
        grpc_port=0,
        drain_timeout_s=1,
        **overrides,
    )


@pytest.fixture
def service_settings(database_url, feedback_redis_url, tmp_path) -> FeedbackSettings:
    """Settings for an in-process service; tests may edit them before `feedback` starts it."""
    return make_settings(database_url, feedback_redis_url, tmp_path)


@pytest.fixture
def feedback(service_settings) -> Iterator[RunningService]:
    """The feedback service (HTTP + gRPC + writer + outbox relay) on loopback ports."""
    server = FeedbackServer(service_settings)
    server.start()
    channel = internal_channel(f"127.0.0.1:{server.grpc_port}")
    http = httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", timeout=10)
    client = redis.Redis.from_url(service_settings.redis_url, decode_responses=True)
    try:
        yield RunningService(server, http, feedback_pb2_grpc.FeedbackServiceStub(channel), client)
    finally:
        http.close()
        channel.close()
        server.stop()
