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
from services.rlhf.loop import StopRequested, request_stop
from services.rlhf.metric_names import standard_metrics
from services.rlhf.ppo import PPOConfig, PPOTrainer
from services.rlhf.sequences import build_response_batch

PROMPTS = [[{"role": "user", "content": f"Tell me something about topic {i}."}] for i in range(16)]
PTX_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Paris is the capital of France and sits on the Seine.",
    "A triangle has three sides and its angles add up to 180 degrees.",
]


class NewlineCountReward(nn.Module):
    """Stands in for a trained reward model: the score is how many newlines the conversation
    holds (counted in its text, so it does not matter how the newlines were tokenised).

    The prompt's newlines are the same for every prompt here (one chat template, no newline
    in the user text), so differences in score come from the answer alone.
    """

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def rewards(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        texts = [
            self.tokenizer.decode(row[mask.bool()].tolist())
            for row, mask in zip(input_ids, attention_mask, strict=True)
        ]
        return torch.tensor([float(text.count("\n")) for text in texts])


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
        # Eight tokens of a random model rarely end a turn: let the rule score every answer.
        truncated_answer_score=None,
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
        NewlineCountReward(AutoTokenizer.from_pretrained(policy_dir)),
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
    named = standard_metrics(history[0])
    assert named["objective/kl"] == history[0]["kl"]
    assert 0.5 < named["val/ratio"] < 2.0  # a large lr here, yet a bounded policy change
    assert named["objective/entropy"] > 0


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


def test_a_stop_request_ends_the_run_after_its_iteration_with_a_checkpoint_there(
    straight_run, policy_dir, tmp_path
):
    """What SIGTERM does to a stage (services/trainer/stage_main.py): no periodic checkpoint
    would hold these iterations (one every 100), the stop's own save does."""
    straight, _ = straight_run
    config = small_config()
    first = make_trainer(policy_dir, config, checkpoint_dir=tmp_path)

    def stop_during_the_second(iteration, _stats):
        if iteration == 1:
            request_stop()

    with pytest.raises(StopRequested) as stopped:
        first.train(PROMPTS, ITERATIONS, progress=False, on_iteration=stop_during_the_second)
    assert stopped.value.step == 2

    resumed = make_trainer(policy_dir, config, checkpoint_dir=tmp_path)
    history = resumed.train(PROMPTS, iterations=ITERATIONS, progress=False)
    assert len(history) == ITERATIONS - 2  # both finished iterations kept, none redone
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
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


def test_an_answer_cut_at_the_limit_gets_the_fixed_score(policy_dir):
    trainer = make_trainer(
        policy_dir,
        small_config(truncated_answer_score=-3.0, sampling=SamplingConfig(max_new_tokens=2)),
    )
    eos = trainer.tokenizer.eos_token_id
    scores, finished = trainer._scores(PROMPTS[:3], [[11, 12], [13, eos], [eos]])
    assert finished.tolist() == [False, True, True]
    assert scores[0].item() == -3.0
    # A finished answer keeps the reward model's score (here: the template's newlines).
    assert scores[1].item() == scores[2].item() > 0


def test_a_batch_of_one_one_token_answer_trains_without_error(policy_dir):
    config = small_config(
        rollout_batch_size=1, minibatch_size=1, sampling=SamplingConfig(max_new_tokens=1)
    )
    stats = make_trainer(policy_dir, config).step(PROMPTS[:1], seed=0)
    assert stats["answer_length"] == 1.0
    assert all(value == value for value in stats.values())  # no NaN anywhere


def test_ptx_draws_the_papers_ratio_of_texts_per_episode(policy_dir):
    config = small_config(ptx_coef=1.0, ptx_per_episode=3.0, ppo_epochs=1)
    trainer = make_trainer(policy_dir, config, ptx_texts=PTX_TEXTS)
    rows_without_positions = []  # ptx forwards: plain text, no position ids

    def record(_module, _args, kwargs, _out):
        if kwargs.get("position_ids") is None and "logits_to_keep" not in kwargs:
            rows_without_positions.append(kwargs["input_ids"].shape[0])

    hook = trainer.policy.register_forward_hook(record, with_kwargs=True)
    trainer.step(PROMPTS[:8], seed=0)
    hook.remove()
    # 8 episodes in minibatches of 4: 12 texts per minibatch, run in chunks of 4.
    assert sum(rows_without_positions) == 2 * 12
    assert max(rows_without_positions) <= 4
