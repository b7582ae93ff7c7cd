"""Fixtures for the reward service: tiny reward models in a temporary registry."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from services.common.registry import ModelRegistry
from services.rlhf.heads import ScalarHeadModel


def _add_rm(registry: ModelRegistry, tiny_model_dir, seed: int) -> str:
    torch.manual_seed(seed)
    rm = ScalarHeadModel.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def write(folder):
        rm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return registry.create_version("reward", write, notes=f"tiny RM, head seed {seed}").version


@pytest.fixture
def reward_store(tiny_model_dir, tmp_path) -> ModelRegistry:
    """reward/v0 (promoted) and reward/v1, tiny RMs with different heads."""
    registry = ModelRegistry(tmp_path / "models")
    v0 = _add_rm(registry, tiny_model_dir, seed=1)
    _add_rm(registry, tiny_model_dir, seed=2)
    registry.promote("reward", v0)
    return registry
