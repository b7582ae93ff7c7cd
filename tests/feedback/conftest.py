"""Fixtures for the feedback service: a real store on SQLite and on PostgreSQL, real Redis,
and the service itself serving HTTP and gRPC on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
import sqlalchemy as sa

from services.feedback.settings import FeedbackSettings
from tests.harness import FeedbackService, feedback_settings

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


@pytest.fixture
def service_settings(database_url, feedback_redis_url, tmp_path) -> FeedbackSettings:
    """Settings for an in-process service; tests may edit them before `feedback` starts it."""
    return feedback_settings(database_url, feedback_redis_url, tmp_path)


@pytest.fixture
def feedback(service_settings) -> Iterator[FeedbackService]:
    """The feedback service (HTTP + gRPC + writer + outbox relay) on loopback ports."""
    service = FeedbackService(service_settings).start()
    try:
        yield service
    finally:
        service.close()
