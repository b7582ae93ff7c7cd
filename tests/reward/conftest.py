"""Fixtures for the reward service: tiny reward models in a temporary registry."""

from __future__ import annotations

import pytest

from services.common.registry import ModelRegistry
from tests.harness import add_tiny_reward_model


@pytest.fixture
def reward_store(tiny_model_dir, tmp_path) -> ModelRegistry:
    """reward/v0 (promoted) and reward/v1, tiny RMs with different heads."""
    registry = ModelRegistry(tmp_path / "models")
    v0 = add_tiny_reward_model(registry, tiny_model_dir, seed=1)
    add_tiny_reward_model(registry, tiny_model_dir, seed=2)
    registry.promote("reward", v0)
    return registry
