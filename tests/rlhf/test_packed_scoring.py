"""Packed scoring gives the padded forward's rewards, computing shared prefixes once."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2Model

from services.rlhf.heads import ScalarHeadModel
from services.rlhf.packed_scoring import PackedScorer, supports_packing
from services.rlhf.tokenization import chat_template_prefix, encode_prompt_answer, pad


@pytest.fixture(scope="module")
def rm_and_tokenizer(tiny_model_dir):
    torch.manual_seed(3)
    model = ScalarHeadModel.from_pretrained(tiny_model_dir).eval()
    # A head with real spread, so that a wrong token or position shows in the reward.
    torch.nn.init.normal_(model.head.weight, std=1.0)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def padded_rewards(model, tokenizer, items) -> list[float]:
    ids, mask = pad([i for i, _ in items], tokenizer.pad_token_id)
    with torch.inference_mode():
        return model.rewards(ids, mask).tolist()


def encode(tokenizer, messages, answer):
    item = encode_prompt_answer(tokenizer, messages, answer, 512)
    return item.input_ids, item.prompt_len


def user(text):
    return [{"role": "user", "content": text}]


def test_rewards_equal_the_padded_forward_for_a_mixed_batch(rm_and_tokenizer):
    model, tokenizer = rm_and_tokenizer
    items = [
        encode(tokenizer, user("Name a colour."), "Blue."),
        # best-of-n: three answers to one prompt
        encode(tokenizer, user("Why is the sky blue?"), "Rayleigh scattering of sunlight."),
        encode(tokenizer, user("Why is the sky blue?"), "Because it is."),
        encode(tokenizer, user("Why is the sky blue?"), "It reflects the sea, " * 6),
        # a system message: does not start with the template's default prefix
        encode(
            tokenizer,
            [{"role": "system", "content": "Be terse."}, *user("Hi")],
            "Hello.",
        ),
        # a multi-turn chat
        encode(
            tokenizer,
            [*user("2+2?"), {"role": "assistant", "content": "4"}, *user("And 3+3?")],
            "6",
        ),
    ]
    scorer = PackedScorer(model, chat_template_prefix(tokenizer))
    assert scorer.shared_prefix_len > 0
    assert scorer.rewards(items) == pytest.approx(padded_rewards(model, tokenizer, items), abs=1e-5)


def test_each_distinct_token_run_is_computed_once(rm_and_tokenizer):
    model, tokenizer = rm_and_tokenizer
    prompt = user("Why is the sky blue?")
    answers = ["Scattering.", "Because it is.", "No idea."]
    items = [encode(tokenizer, prompt, a) for a in answers]
    scorer = PackedScorer(model, chat_template_prefix(tokenizer))
    batch = scorer.plan(items)
    prompt_len = items[0][1]
    answer_tokens = sum(len(ids) - p for ids, p in items)
    # The cached prefix is not in the batch, the prompt's own tokens appear once.
    assert batch.tokens == prompt_len - scorer.shared_prefix_len + answer_tokens
    assert scorer.rewards(items) == pytest.approx(padded_rewards(model, tokenizer, items), abs=1e-5)


def test_without_a_cached_prefix_and_one_item_at_a_time(rm_and_tokenizer):
    model, tokenizer = rm_and_tokenizer
    items = [encode(tokenizer, user(f"Question {i}?"), f"Answer {i}.") for i in range(4)]
    scorer = PackedScorer(model)
    assert scorer.shared_prefix_len == 0
    expected = padded_rewards(model, tokenizer, items)
    assert [scorer.rewards([item])[0] for item in items] == pytest.approx(expected, abs=1e-5)


def test_an_item_that_is_all_prompt_is_read_at_its_last_token(rm_and_tokenizer):
    model, tokenizer = rm_and_tokenizer
    ids, _ = encode(tokenizer, user("Hi"), "Hello.")
    items = [(ids, len(ids)), (ids[:5], 5)]
    scorer = PackedScorer(model, chat_template_prefix(tokenizer))
    assert scorer.rewards(items) == pytest.approx(padded_rewards(model, tokenizer, items), abs=1e-5)


def test_bf16_autocast_stays_close_to_fp32(rm_and_tokenizer):
    model, tokenizer = rm_and_tokenizer
    items = [encode(tokenizer, user(f"Tell me about {w}."), f"{w} is nice.") for w in "abcdef"]
    scorer = PackedScorer(model, chat_template_prefix(tokenizer))
    exact = scorer.rewards(items)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = scorer.rewards(items)
    assert fast == pytest.approx(exact, abs=0.05)
    assert fast != exact  # bf16 really ran


def test_other_architectures_are_refused_so_callers_pad():
    backbone = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    model = ScalarHeadModel(backbone)
    assert not supports_packing(model)
    with pytest.raises(ValueError, match="gpt2"):
        PackedScorer(model)
