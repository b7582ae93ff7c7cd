"""One step of each stage on the real base model (SmolLM2-135M-Instruct): `make test-slow`."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common.registry import ModelRegistry
from services.rlhf.generation import SamplingConfig
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.ppo import PPOConfig, PPOTrainer
from services.rlhf.reward_model import (
    Comparison,
    RewardConfig,
    pairwise_accuracy,
    train_reward_model,
)
from services.rlhf.sft import Demonstration, SFTConfig, train_sft

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Give me a tip for sleeping better."}],
    [{"role": "user", "content": "Name a fruit that is yellow."}],
]


@pytest.fixture(scope="module")
def v0(real_store):
    return ModelRegistry(real_store).resolve("policy/v0").path


@pytest.fixture(scope="module")
def tokenizer(v0):
    return AutoTokenizer.from_pretrained(v0)


def test_one_sft_step_moves_the_weights_and_lowers_the_loss(v0, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(v0)
    demos = [
        Demonstration(PROMPTS[0], "The capital of France is Paris."),
        Demonstration(PROMPTS[2], "A banana is yellow."),
    ]
    before = model.model.norm.weight.detach().clone()
    config = SFTConfig(lr=1e-5, epochs=2, batch_size=2, grad_accum_steps=1, max_length=128)
    result = train_sft(model, tokenizer, demos, config, progress=False)
    assert result.steps == 2 and all(math.isfinite(x) for x in result.losses)
    assert result.losses[1] < result.losses[0]
    assert not torch.equal(before, model.model.norm.weight)


def test_one_reward_model_epoch_on_ranked_prompts(v0, tokenizer):
    model = ScalarHeadModel.from_pretrained(v0)
    answers = [
        ["Paris.", "The capital of France is Paris.", "London.", "I don't know."],
        ["Keep a regular schedule.", "Drink coffee at night.", "Sleep.", "Go to bed on time."],
        ["A banana.", "A lemon or a banana.", "A cucumber.", "Blue."],
    ]
    ranks = [[1, 0, 3, 2], [0, 3, 2, 1], [1, 0, 2, 3]]
    data = [Comparison.from_ranks(p, a, r) for p, a, r in zip(PROMPTS, answers, ranks, strict=True)]
    config = RewardConfig(lr=1e-5, epochs=1, prompts_per_batch=3, max_length=128)
    result = train_reward_model(model, tokenizer, data, config, progress=False)
    assert result.steps == 1 and math.isfinite(result.losses[0])
    assert 0.0 <= pairwise_accuracy(model, tokenizer, data, max_length=128) <= 1.0


def test_one_ppo_iteration(v0, tokenizer):
    policy = AutoModelForCausalLM.from_pretrained(v0)
    reference = copy.deepcopy(policy)
    reward_model = ScalarHeadModel.from_pretrained(v0)
    config = PPOConfig(
        rollout_batch_size=3,
        minibatch_size=3,
        policy_lr=1e-6,
        sampling=SamplingConfig(max_new_tokens=16, do_sample=True),
    )
    trainer = PPOTrainer(policy, reference, None, reward_model, tokenizer, config)
    stats = trainer.step(PROMPTS, seed=0)
    assert all(math.isfinite(v) for v in stats.values()), stats
    # The policy starts as the reference: the rollout's KL is zero up to float noise.
    assert abs(stats["kl"]) < 1e-3
    assert 1 <= stats["answer_length"] <= 16
