import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.rlhf.evaluation import (
    WinRate,
    kl_to_reference,
    mean_reward,
    perplexity,
    reward_model_judge,
    win_rate,
    win_rate_with_interval,
)
from services.rlhf.generation import SamplingConfig, generate
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.reward_reading import read_rewards

PROMPT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_win_rate_counts_ties_half():
    def longer_wins(_prompt, a, b):
        return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5

    result = win_rate(
        [PROMPT] * 4, ["aaa", "a", "aa", "aaaa"], ["a", "aaa", "aa", "a"], longer_wins
    )
    assert result == WinRate(wins=2, losses=1, ties=1)
    assert result.rate == pytest.approx(2.5 / 4)
    with pytest.raises(ValueError, match="one answer from each policy"):
        win_rate([PROMPT], ["a"], [], longer_wins)


def test_reward_model_judge_and_mean_reward_agree_with_scores(tiny_model_dir, tokenizer):
    rm = ScalarHeadModel.from_pretrained(tiny_model_dir).eval()
    answers = ["blue sky", "a long walk in the park", "no"]
    scores = read_rewards(rm, tokenizer, [(PROMPT, a) for a in answers])
    judge = reward_model_judge(rm, tokenizer)
    assert judge(PROMPT, answers[0], answers[1]) == (1.0 if scores[0] > scores[1] else 0.0)
    assert judge(PROMPT, answers[2], answers[2]) == 0.5
    assert mean_reward(rm, tokenizer, [PROMPT] * 3, answers) == pytest.approx(sum(scores) / 3)


def test_kl_to_reference_is_zero_for_itself_and_positive_for_a_changed_policy(
    tiny_model_dir, tokenizer
):
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        policy.lm_head.weight.mul_(3.0)  # sharper distribution: a real divergence
    rollout = generate(policy, tokenizer, [PROMPT] * 24, SamplingConfig(max_new_tokens=8))
    args = (rollout.prompt_ids, rollout.answer_ids, tokenizer.pad_token_id)
    assert kl_to_reference(reference, reference, *args) == pytest.approx(0.0, abs=1e-5)
    assert kl_to_reference(policy, reference, *args) > 0.1


def test_perplexity_matches_the_models_own_loss(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = math.exp(model(input_ids=ids, labels=ids).loss.item())
    assert perplexity(model, tokenizer, [text]) == pytest.approx(expected, rel=1e-4)
    # Batching with a shorter (padded) text: the mean is over real tokens only.
    short = "Hi there"
    short_ids = tokenizer(short, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        short_loss = model(input_ids=short_ids, labels=short_ids).loss.item()
    n_long, n_short = ids.shape[1] - 1, short_ids.shape[1] - 1
    pooled = (math.log(expected) * n_long + short_loss * n_short) / (n_long + n_short)
    assert perplexity(model, tokenizer, [text, short]) == pytest.approx(math.exp(pooled), rel=1e-4)


# ---- the win rate ---------------------------------------------------------------------------


def test_ties_count_half_in_the_win_rate():
    rate, _, _ = win_rate_with_interval([1.0, 0.5, 0.5, 0.0], samples=200)
    assert rate == 0.5
    rate, _, _ = win_rate_with_interval([0.5, 0.5, 1.0, 1.0], samples=200)
    assert rate == 0.75


def test_the_interval_contains_the_win_rate():
    verdicts = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 1.0]
    rate, lower, upper = win_rate_with_interval(verdicts, samples=1000, seed=3)
    assert rate == pytest.approx(sum(verdicts) / len(verdicts))
    assert 0.0 <= lower < rate < upper <= 1.0


def test_a_wider_level_gives_a_wider_interval():
    verdicts = [1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 1.0]
    _, low_90, high_90 = win_rate_with_interval(verdicts, samples=2000, level=0.9)
    _, low_99, high_99 = win_rate_with_interval(verdicts, samples=2000, level=0.99)
    assert low_99 <= low_90 and high_90 <= high_99
    assert (high_99 - low_99) > (high_90 - low_90)


def test_all_wins_give_a_certain_win_rate():
    assert win_rate_with_interval([1.0] * 7, samples=300) == (1.0, 1.0, 1.0)


def test_the_interval_is_the_same_for_the_same_seed():
    verdicts = [1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 1.0, 0.0]
    first = win_rate_with_interval(verdicts, samples=500, seed=7)
    assert win_rate_with_interval(verdicts, samples=500, seed=7) == first
    others = {win_rate_with_interval(verdicts, samples=500, seed=s)[1:] for s in range(10)}
    assert len(others) > 1, "the seed does not change the resampling"


def test_no_verdicts_is_an_error_not_a_win_rate():
    with pytest.raises(ValueError, match="no verdicts"):
        win_rate_with_interval([], samples=100)
