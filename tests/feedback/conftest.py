"""Fixtures for the feedback service: a real store on SQLite and on PostgreSQL, real Redis,
and the service itself serving HTTP and gRPC on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.feedback.settings import FeedbackSettings
from tests.harness import FeedbackService, empty_redis_db, feedback_settings


@pytest.fixture
def feedback_redis_url(redis_url) -> str:
    """The test Redis, database 3, emptied: the events stream starts empty."""
    return empty_redis_db(redis_url, 3)


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
