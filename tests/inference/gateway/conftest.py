"""Fixtures for the gateway's foundation modules: real Redis (database 5) and the real feedback
service in-process, which can be stopped and started again on the same port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.inference.gateway.gateway_helpers import FeedbackHarness

GATEWAY_REDIS_DB = 5


@pytest.fixture
def gateway_redis_url(redis_url) -> str:
    """The test Redis, database 5 (no other test uses it), emptied."""
    url = redis_url.rsplit("/", 1)[0] + f"/{GATEWAY_REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def feedback(tmp_path, gateway_redis_url) -> Iterator[FeedbackHarness]:
    harness = FeedbackHarness(tmp_path / "feedback", gateway_redis_url)
    (tmp_path / "feedback").mkdir()
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()
