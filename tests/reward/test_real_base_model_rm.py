"""The reward service scoring with an RM built on the real base model: `make test-slow`."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from services.common.generated.flywheel.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from services.common.registry import ModelRegistry
from services.reward.server import RewardServer
from services.reward.settings import RewardSettings
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.reward_reading import read_rewards
from tests.harness import internal_channel

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
ANSWERS = ["The capital of France is Paris.", "I don't know.", "Berlin is a city in Germany."]


def test_served_rewards_from_a_smollm2_rm_equal_the_library(real_store, tmp_path):
    policy = ModelRegistry(real_store).promoted("policy")
    torch.manual_seed(0)
    rm = ScalarHeadModel.from_pretrained(policy.path).eval()
    tokenizer = AutoTokenizer.from_pretrained(policy.path)
    registry = ModelRegistry(tmp_path / "models")

    def write(folder):
        rm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    registry.promote("reward", registry.create_version("reward", write).version)
    with torch.inference_mode():
        expected = read_rewards(rm, tokenizer, [(PROMPT, a) for a in ANSWERS])

    server = RewardServer(
        RewardSettings(
            FLYWHEEL_MODEL_STORE=registry.root,
            FLYWHEEL_REDIS_URL="redis://127.0.0.1:1/0",
            grpc_port=0,
            device="cpu",
            precision="fp32",
        )
    )
    port = server.start()
    try:
        with internal_channel(f"127.0.0.1:{port}") as channel:
            reply = reward_pb2_grpc.RewardServiceStub(channel).Score(
                reward_pb2.ScoreRequest(
                    prompt=[common_pb2.ChatMessage(**m) for m in PROMPT], answers=ANSWERS
                ),
                timeout=120,
            )
    finally:
        server.stop()
    assert reply.model_version == "v0"
    assert all(math.isfinite(r) for r in reply.rewards)
    assert list(reply.rewards) == pytest.approx(expected, abs=1e-4)
