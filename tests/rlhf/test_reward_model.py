import math
import random
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from services.rlhf.heads import ScalarHeadModel
from services.rlhf.reward_model import (
    Comparison,
    RewardConfig,
    _collate,
    centre_on_references,
    kwise_loss,
    pairwise_accuracy,
    train_reward_model,
)
from services.rlhf.reward_reading import read_rewards


def softplus_neg(d: float) -> float:
    """-log sigmoid(d) = log(1 + e^-d)."""
    return math.log1p(math.exp(-d))


def loss_of_ranking(scores: list[float]) -> float:
    """K-wise loss of one prompt whose answers are listed best first."""
    k = len(scores)
    pairs = list(combinations(range(k), 2))
    r = torch.tensor(scores)
    return kwise_loss(
        r, torch.tensor(pairs), torch.zeros(len(pairs), dtype=torch.long), n_groups=1
    ).item()


def test_kwise_loss_against_hand_computed_values():
    # K=2: one pair, r_w - r_l = 1: log(1 + e^-1) = 0.3132617
    assert loss_of_ranking([1.0, 0.0]) == pytest.approx(0.3132617, abs=1e-6)
    # K=3, scores 2,1,0: differences 1, 2, 1 over C(3,2)=3 pairs:
    # (2*log(1+e^-1) + log(1+e^-2)) / 3 = (0.6265234 + 0.1269280) / 3 = 0.2511505
    assert loss_of_ranking([2.0, 1.0, 0.0]) == pytest.approx(0.2511505, abs=1e-6)
    # K=4, scores 3,2,1,0: differences 1,2,3,1,2,1 over C(4,2)=6 pairs:
    # (3*0.3132617 + 2*0.1269280 + 0.0485874) / 6 = 1.2422285 / 6 = 0.2070381
    assert loss_of_ranking([3.0, 2.0, 1.0, 0.0]) == pytest.approx(0.2070381, abs=1e-6)
    # All equal scores: every pair costs log 2, whatever K.
    assert loss_of_ranking([0.5] * 4) == pytest.approx(math.log(2), abs=1e-6)


def test_each_prompt_weighs_the_same_however_many_answers_it_has():
    # Group 0: K=4 scored 3,2,1,0 (loss 0.2070381); group 1: one pair, difference -1
    # (the worse one scored higher): log(1 + e^1) = 1.3132617. Mean over prompts, not pairs.
    rewards = torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0, 1.0])
    pairs = torch.tensor([*combinations(range(4), 2), (4, 5)])
    groups = torch.tensor([0] * 6 + [1])
    loss = kwise_loss(rewards, pairs, groups, n_groups=2).item()
    assert loss == pytest.approx((0.2070381 + 1.3132617) / 2, abs=1e-6)


def test_rankings_with_ties_drop_the_tied_pairs():
    comparison = Comparison.from_ranks(
        [{"role": "user", "content": "q"}], ["a", "b", "c"], [0, 1, 1]
    )
    assert sorted(comparison.pairs) == [(0, 1), (0, 2)]
    with pytest.raises(ValueError, match="does not name two"):
        Comparison([{"role": "user", "content": "q"}], ["a", "b"], [(0, 2)])


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_kwise_equals_mean_of_pairwise_losses_with_one_forward_per_answer(
    tiny_model_dir, tokenizer
):
    model = ScalarHeadModel.from_pretrained(tiny_model_dir)
    prompt = [{"role": "user", "content": "Tell me about rivers."}]
    answers = ["Rivers flow.", "Water moves downhill.", "I like rivers a lot.", "No."]
    comparison = Comparison.from_ranks(prompt, answers, [2, 0, 3, 1])

    rows_seen = []
    hook = model.backbone.register_forward_hook(
        lambda _m, args, kwargs, _out: rows_seen.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    batch = _collate(tokenizer, [comparison], 128, "cpu")
    rewards = model.rewards(batch.input_ids, batch.attention_mask)
    kwise = kwise_loss(rewards, batch.pairs, batch.pair_group, batch.n_groups)
    hook.remove()
    assert rows_seen == [4]  # one forward, each of the K answers once

    # Pairwise, the way a pair-at-a-time trainer sees it: each pair scored on its own.
    pair_losses = []
    for better, worse in comparison.pairs:
        scores = read_rewards(
            model, tokenizer, [(prompt, answers[better]), (prompt, answers[worse])]
        )
        pair_losses.append(-F.logsigmoid(torch.tensor(scores[0] - scores[1])).item())
    assert len(pair_losses) == 6
    assert kwise.item() == pytest.approx(sum(pair_losses) / 6, abs=1e-5)


WORDS = ["apple", "river", "stone", "cloud", "green", "music", "table", "light"]


def synthetic_comparisons(n: int, seed: int) -> list[Comparison]:
    """A learnable preference: the more times an answer says "great", the better it is."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Describe item {i}."}]
        answers, ranks = [], []
        for good in rng.sample(range(4), 4):
            words = [rng.choice(WORDS) for _ in range(5)] + ["great"] * good
            rng.shuffle(words)
            answers.append(" ".join(words))
            ranks.append(3 - good)
        out.append(Comparison.from_ranks(prompt, answers, ranks))
    return out


def test_learns_a_synthetic_preference_and_centres_on_references(tiny_model_dir, tokenizer):
    torch.manual_seed(0)
    model = ScalarHeadModel.from_pretrained(tiny_model_dir)
    train, heldout = synthetic_comparisons(160, seed=1), synthetic_comparisons(40, seed=2)
    before = pairwise_accuracy(model, tokenizer, heldout)

    config = RewardConfig(lr=2e-3, epochs=3, prompts_per_batch=8, max_length=64, warmup_ratio=0.1)
    result = train_reward_model(model, tokenizer, train, config, progress=False)

    after = pairwise_accuracy(model, tokenizer, heldout)
    assert result.steps == 3 * 20
    assert after > 0.9, (before, after)
    assert sum(result.losses[-10:]) / 10 < 0.5 * sum(result.losses[:10]) / 10

    references = [(c.prompt, c.answers[0]) for c in heldout]
    shift = centre_on_references(model, tokenizer, references, max_length=64)
    centred = read_rewards(model, tokenizer, references, max_length=64)
    assert abs(sum(centred) / len(centred)) < 1e-4
    assert shift != 0.0
    assert pairwise_accuracy(model, tokenizer, heldout) == after  # a shift keeps every order


def test_resumed_training_equals_an_uninterrupted_run(tiny_model_dir, tokenizer, tmp_path):
    data = synthetic_comparisons(24, seed=3)
    config = RewardConfig(lr=1e-3, epochs=2, prompts_per_batch=4, max_length=64, seed=5)

    def fresh() -> ScalarHeadModel:
        torch.manual_seed(0)  # the same fresh head every time
        return ScalarHeadModel.from_pretrained(tiny_model_dir)

    straight = fresh()
    full = train_reward_model(straight, tokenizer, data, config, progress=False)

    first = train_reward_model(
        fresh(), tokenizer, data, config, False, tmp_path, stop_after_steps=7
    )
    assert first.steps == 7 and not first.completed
    torch.manual_seed(999)  # a new process would start from other RNG state
    resumed_model = fresh()
    resumed = train_reward_model(resumed_model, tokenizer, data, config, False, tmp_path)

    assert resumed.steps == full.steps == 12 and resumed.completed
    assert resumed.losses == pytest.approx(full.losses, abs=1e-6)
    for a, b in zip(straight.parameters(), resumed_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)

    with pytest.raises(ValueError, match="different config: lr"):
        other = RewardConfig(**{**vars(config), "lr": 1.0})
        train_reward_model(fresh(), tokenizer, data, other, False, tmp_path)
    with pytest.raises(ValueError, match="different training data"):
        train_reward_model(fresh(), tokenizer, data[:20], config, False, tmp_path)


def test_training_only_the_top_layers_leaves_the_lower_ones_as_they_were(tiny_model_dir, tokenizer):
    torch.manual_seed(0)
    model = ScalarHeadModel.from_pretrained(tiny_model_dir)
    blocks = model.backbone.layers
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = RewardConfig(lr=2e-3, epochs=2, prompts_per_batch=8, max_length=64, train_top_layers=1)
    heldout = synthetic_comparisons(40, seed=2)
    start = pairwise_accuracy(model, tokenizer, heldout)
    train_reward_model(model, tokenizer, synthetic_comparisons(80, seed=1), config, False)

    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    top = f"backbone.layers.{len(blocks) - 1}."
    assert changed and all(n.startswith((top, "backbone.norm.", "head.")) for n in changed)
    assert any(n.startswith(top) for n in changed) and "head.weight" in changed
    # Still learns the preference from what it may train.
    assert pairwise_accuracy(model, tokenizer, heldout) > max(start, 0.7)


def test_a_layer_count_of_zero_or_beyond_the_model_trains_everything(tiny_model_dir):
    model = ScalarHeadModel.from_pretrained(tiny_model_dir)
    model.train_only_top_layers(1)
    model.train_only_top_layers(len(model.backbone.layers))
    assert all(p.requires_grad for p in model.parameters())
