"""PPO / PPO-ptx on the tiny model: reward goes up, KL stays bounded, ptx limits the tax,
a resumed run equals an uninterrupted one, and the value model starts as the RM."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.rlhf.config import from_dict, to_dict
from services.rlhf.evaluation import perplexity
from services.rlhf.generation import SamplingConfig
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.ppo import PPOConfig, PPOTrainer
from services.rlhf.sequences import build_response_batch

NEWLINE = 198  # "\n": the scaled tiny model already samples it often, so PPO can find it
PROMPTS = [[{"role": "user", "content": f"Tell me something about topic {i}."}] for i in range(16)]
PTX_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Paris is the capital of France and sits on the Seine.",
    "A triangle has three sides and its angles add up to 180 degrees.",
]


class NewlineCountReward(nn.Module):
    """Stands in for a trained reward model: the score is how many newline tokens the row holds.

    The prompt's newlines are the same for every prompt here (one chat template, no newline
    in the user text), so differences in score come from the answer alone.
    """

    def rewards(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        return ((input_ids == NEWLINE) & attention_mask.bool()).sum(dim=1).float()


@pytest.fixture(scope="module")
def policy_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its (tied) embeddings scaled up, so it samples a peaked, learnable
    distribution instead of near-uniform noise over 49k tokens."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10.0)
    folder = tmp_path_factory.mktemp("peaked-policy")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def small_config(**overrides) -> PPOConfig:
    base = PPOConfig(
        policy_lr=3e-3,
        value_lr=1e-3,
        rollout_batch_size=8,
        minibatch_size=4,
        ppo_epochs=2,
        kl_beta=0.05,
        sampling=SamplingConfig(max_new_tokens=8),
        checkpoint_every=100,
        seed=0,
    )
    return dataclasses.replace(base, **overrides)


def make_trainer(policy_dir, config, ptx_texts=None, checkpoint_dir=None) -> PPOTrainer:
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    reference = AutoModelForCausalLM.from_pretrained(policy_dir)
    value_model = ScalarHeadModel.from_pretrained(policy_dir)
    torch.manual_seed(1)  # the fresh value head's init
    nn.init.normal_(value_model.head.weight, std=0.01)
    return PPOTrainer(
        policy,
        reference,
        value_model,
        NewlineCountReward(),
        AutoTokenizer.from_pretrained(policy_dir),
        config,
        ptx_texts=ptx_texts,
        checkpoint_dir=checkpoint_dir,
    )


ITERATIONS = 5


@pytest.fixture(scope="module")
def straight_run(policy_dir) -> tuple[PPOTrainer, list[dict[str, float]]]:
    """One uninterrupted run, shared by the learning test and the resume test (CPU time)."""
    trainer = make_trainer(policy_dir, small_config())
    return trainer, trainer.train(PROMPTS, iterations=ITERATIONS, progress=False)


def test_ppo_raises_the_reward_while_the_kl_stays_bounded(straight_run):
    _, history = straight_run
    scores = [h["score"] for h in history]
    kls = [h["kl"] for h in history]
    print("scores", [round(s, 2) for s in scores], "kl", [round(k, 2) for k in kls])
    before, after = sum(scores[:2]) / 2, sum(scores[-2:]) / 2
    assert after > before + 1.5  # 1.5 more newlines per 8-token answer
    assert max(kls) < 6.0  # nats per 8-token answer, with beta = 0.05
    assert all(h["beta"] == 0.05 for h in history)
    assert {"policy_loss", "value_loss", "policy_clip_fraction", "episodes_per_s"} <= set(
        history[0]
    )


def test_ptx_keeps_perplexity_on_pretraining_texts_lower(policy_dir):
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    plain = make_trainer(policy_dir, small_config())
    plain.train(PROMPTS, iterations=2, progress=False)
    ptx = make_trainer(policy_dir, small_config(ptx_coef=1.0), ptx_texts=PTX_TEXTS)
    history = ptx.train(PROMPTS, iterations=2, progress=False)
    without, with_ptx = (perplexity(t.policy, tokenizer, PTX_TEXTS) for t in (plain, ptx))
    start = perplexity(AutoModelForCausalLM.from_pretrained(policy_dir), tokenizer, PTX_TEXTS)
    print("perplexity start", start, "ppo", without, "ppo-ptx", with_ptx)
    assert history[-1]["ptx_loss"] > 0
    assert with_ptx < 0.5 * without


def test_resumed_run_equals_an_uninterrupted_one(straight_run, policy_dir, tmp_path):
    straight, _ = straight_run
    config = small_config(checkpoint_every=1)  # a field that may differ on resume
    first = make_trainer(policy_dir, config, checkpoint_dir=tmp_path)
    first.train(PROMPTS, iterations=2, progress=False)
    # New objects from the initial weights: everything else must come from the checkpoint.
    resumed = make_trainer(policy_dir, config, checkpoint_dir=tmp_path)
    history = resumed.train(PROMPTS, iterations=ITERATIONS, progress=False)

    assert resumed.iteration == ITERATIONS and len(history) == ITERATIONS - 2
    for (name, a), b in zip(
        straight.policy.named_parameters(), resumed.policy.parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), name
    for a, b in zip(
        straight.value_model.parameters(), resumed.value_model.parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5)


def test_resume_refuses_a_different_config(policy_dir, tmp_path):
    make_trainer(policy_dir, small_config(), checkpoint_dir=tmp_path).save()
    other = make_trainer(policy_dir, small_config(kl_beta=0.1), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different config: kl_beta"):
        other.train(PROMPTS, iterations=1, progress=False)
    assert other.iteration == 0


def test_value_model_starts_as_the_reward_model(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reward_model = ScalarHeadModel.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = PPOTrainer(
        policy, copy.deepcopy(policy), None, reward_model, tokenizer, small_config()
    )
    batch = build_response_batch(
        [[1, 5, 6], [1, 7, 8, 9, 10]], [[20, 21, 22], [30]], tokenizer.pad_token_id
    )
    with torch.no_grad():
        values = trainer.value_model.values(
            batch.input_ids, batch.attention_mask, batch.position_ids
        )
        scores = reward_model.rewards(batch.input_ids, batch.attention_mask, batch.position_ids)
    last = batch.prompt_width + batch.response_mask.sum(dim=1).long() - 1
    assert torch.equal(values[torch.arange(2), last], scores)
    assert trainer.value_model is not reward_model
    assert not any(p.requires_grad for p in reward_model.parameters())
    assert all(p.requires_grad for p in trainer.value_model.parameters())


def test_config_round_trips_and_ptx_needs_texts(policy_dir):
    config = small_config(ptx_coef=2.0)
    assert from_dict(PPOConfig, to_dict(config)) == config
    with pytest.raises(ValueError, match="ptx_texts"):
        make_trainer(policy_dir, config)
