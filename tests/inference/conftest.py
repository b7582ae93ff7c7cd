"""Shared by the engine and gateway tests: a registry with two tiny policy versions."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from services.common.registry import ModelRegistry
from tests.conftest import tiny_llama_config


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
