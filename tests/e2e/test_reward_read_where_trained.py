"""The reward PPO optimises is the reward users' answers get: a reward model trained by
services/rlhf scores PPO's rollouts exactly as the running reward service scores the same
conversations over gRPC."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common.generated.flywheel.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from services.common.registry import ModelRegistry
from services.reward.server import RewardServer
from services.reward.settings import RewardSettings
from services.rlhf.generation import SamplingConfig
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.ppo import PPOConfig, PPOTrainer
from services.rlhf.reward_model import Comparison, RewardConfig, train_reward_model
from services.rlhf.reward_reading import served_text
from tests.harness import internal_channel

PROMPTS = [[{"role": "user", "content": f"Say something about item {i}."}] for i in range(6)]


def trained_reward_model(tiny_model_dir) -> ScalarHeadModel:
    """A ScalarHeadModel trained a few steps on comparisons (longer answers preferred)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = ScalarHeadModel.from_pretrained(tiny_model_dir)
    comparisons = [
        Comparison.from_ranks(prompt, ["Yes.", "Yes, and here is why: it is so."], [1, 0])
        for prompt in PROMPTS
    ]
    config = RewardConfig(lr=1e-3, prompts_per_batch=3, max_length=96, epochs=2)
    train_reward_model(model, tokenizer, comparisons, config, progress=False)
    return model.eval()


@pytest.fixture
def reward_service(tiny_model_dir, tmp_path, redis_url):
    rm = trained_reward_model(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    registry = ModelRegistry(tmp_path / "models")

    def write(folder):
        rm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    version = registry.create_version("reward", write).version
    registry.promote("reward", version)
    settings = RewardSettings(
        FLYWHEEL_MODEL_STORE=registry.root,
        FLYWHEEL_REDIS_URL=redis_url,
        grpc_port=0,
        device="cpu",
        precision="fp32",
        drain_timeout_s=1,
    )
    server = RewardServer(settings)
    port = server.start()
    channel = internal_channel(f"127.0.0.1:{port}")
    yield rm, reward_pb2_grpc.RewardServiceStub(channel)
    channel.close()
    server.stop()


def test_ppo_sees_the_scores_the_reward_service_returns(reward_service, tiny_model_dir):
    rm, stub = reward_service
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = dataclasses.replace(
        PPOConfig(rollout_batch_size=len(PROMPTS), minibatch_size=3, seed=0),
        sampling=SamplingConfig(max_new_tokens=6),
        truncated_answer_score=None,  # score every answer, finished or not
    )
    trainer = PPOTrainer(
        policy, AutoModelForCausalLM.from_pretrained(tiny_model_dir), None, rm, tokenizer, config
    )
    torch.manual_seed(0)
    rollout = trainer._rollout(PROMPTS)

    answers = [
        served_text(tokenizer, row[mask.bool()].tolist())
        for row, mask in zip(rollout.batch.response_ids, rollout.batch.response_mask, strict=True)
    ]
    served = [
        stub.Score(
            reward_pb2.ScoreRequest(
                prompt=[common_pb2.ChatMessage(**m) for m in prompt], answers=[answer]
            ),
            timeout=30,
        ).rewards[0]
        for prompt, answer in zip(PROMPTS, answers, strict=True)
    ]
    assert rollout.scores.tolist() == pytest.approx(served, abs=1e-4)
    # The trained RM tells the answers apart, so equal scores are not an accident of a flat RM.
    assert max(served) - min(served) > 1e-3
