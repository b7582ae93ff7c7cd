"""Fixtures for the trainer: the real feedback service with recorded rankings, a registry
holding the tiny policy, and a Redis database of the trainer's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.trainer.settings import TrainerSettings
from tests.harness import FeedbackService, empty_redis_db
from tests.trainer.trainer_helpers import trainer_env

TRAINER_REDIS_DB = 7


@pytest.fixture
def trainer_redis_url(redis_url) -> str:
    """The test Redis, database 7 (the trainer's broker, lease and announcements), emptied."""
    return empty_redis_db(redis_url, TRAINER_REDIS_DB)


@pytest.fixture
def feedback(tmp_path, trainer_redis_url) -> Iterator[FeedbackService]:
    service = FeedbackService.on_sqlite(tmp_path / "feedback", trainer_redis_url).start()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def env(tmp_path, trainer_redis_url, model_store, feedback) -> dict[str, str]:
    """The trainer's environment (for its processes), pointing at the services above."""
    return trainer_env(tmp_path / "trainer", trainer_redis_url, model_store.root, feedback.target)


@pytest.fixture
def settings(env, monkeypatch) -> TrainerSettings:
    """The same settings, for code run in the test process."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return TrainerSettings()
