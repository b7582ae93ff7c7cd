"""The fast decode step computes the model's own tokens: greedy decoding through it equals
transformers' ``generate``, one prompt alone or several of different lengths in one padded
batch, in fp32 and bf16, where this CPU lets oneDNN pack that dtype (the probe the code
asks); where it does not, ``build`` gives None and the model keeps its own forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache

from services.rlhf import cpu_features, llama_decode

pytestmark = pytest.mark.cpu_paths

PROMPTS = [
    "The sky is",
    "Write a short poem about the sea, please.",
    "1, 2, 3,",
    "Hello",
]
NEW_TOKENS = 12


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def model_and_tokenizer(request, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=request.param).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def packed_model_and_tokenizer(model_and_tokenizer):
    """The model, where this CPU packs its dtype (else the test skips, saying why)."""
    model, _ = model_and_tokenizer
    if not cpu_features.onednn_packs(model.dtype):
        pytest.skip(f"oneDNN cannot pack {model.dtype} here ({cpu_features.describe()})")
    return model_and_tokenizer


@pytest.fixture
def unpackable_model_and_tokenizer(model_and_tokenizer):
    """The model, where this CPU cannot pack its dtype (else the test skips: the fast path's
    tests cover it)."""
    model, _ = model_and_tokenizer
    if cpu_features.onednn_packs(model.dtype):
        pytest.skip(f"this CPU packs {model.dtype}: the fast path is tested instead")
    return model_and_tokenizer


def generate_alone(model, tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
        )
    return out[0, ids.shape[1] :].tolist()


def decode_together(model, step, tokenizer, prompts: list[str]) -> list[list[int]]:
    """Left-padded prefill by the model's forward, then every decode step by ``step``."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt_ids in enumerate(encoded):
        ids[row, width - len(prompt_ids) :] = torch.tensor(prompt_ids)
        mask[row, width - len(prompt_ids) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    with torch.inference_mode():
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache
        ).logits[:, -1]
    tokens = logits.argmax(-1, keepdim=True)
    chosen = [tokens]
    next_position = positions[:, -1:] + 1
    for _ in range(NEW_TOKENS - 1):
        mask = torch.cat((mask, torch.ones((len(prompts), 1), dtype=torch.long)), dim=1)
        tokens = step(tokens, next_position, mask, cache).argmax(-1, keepdim=True)
        chosen.append(tokens)
        next_position = next_position + 1
    return torch.cat(chosen, dim=1).tolist()


def test_one_prompt_at_a_time_gives_generates_tokens(packed_model_and_tokenizer):
    model, tokenizer = packed_model_and_tokenizer
    step = llama_decode.build(model)
    assert step is not None
    for prompt in PROMPTS:
        assert decode_together(model, step, tokenizer, [prompt]) == [
            generate_alone(model, tokenizer, prompt)
        ]


@pytest.mark.parametrize(
    "batch", [PROMPTS, PROMPTS[1:3], [PROMPTS[0], PROMPTS[0]]], ids=["four", "two", "same"]
)
def test_prompts_of_different_lengths_in_one_padded_batch_give_generates_tokens(
    packed_model_and_tokenizer, batch
):
    model, tokenizer = packed_model_and_tokenizer
    step = llama_decode.build(model)
    expected = [generate_alone(model, tokenizer, prompt) for prompt in batch]
    assert decode_together(model, step, tokenizer, batch) == expected


def test_logits_equal_the_models_forward_to_rounding(packed_model_and_tokenizer):
    model, tokenizer = packed_model_and_tokenizer
    step = llama_decode.build(model)
    ids = tokenizer("The sky is", add_special_tokens=False, return_tensors="pt")["input_ids"]
    length = ids.shape[1]
    ours, theirs = DynamicCache(), DynamicCache()
    with torch.inference_mode():
        model(input_ids=ids[:, :-1], cache=ours)
        model(input_ids=ids[:, :-1], cache=theirs)
        mask = torch.ones((1, length), dtype=torch.long)
        fast = step(ids[:, -1:], torch.tensor([[length - 1]]), mask, ours)
        reference = model(input_ids=ids[:, -1:], cache=theirs).logits[:, -1].float()
    assert torch.equal(fast.argmax(-1), reference.argmax(-1))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    # The step appended its key and value to the cache as the forward did.
    assert ours.get_seq_length() == theirs.get_seq_length() == length


def _tiny(**overrides) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        **overrides,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention_bias": True},
        {"mlp_bias": True},
        {"hidden_act": "gelu"},
        {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
    ],
    ids=["attention-bias", "mlp-bias", "gelu", "scaled-rope"],
)
def test_models_it_does_not_compute_get_none_and_keep_their_own_forward(overrides):
    assert llama_decode.build(_tiny(**overrides)) is None


def test_a_half_precision_model_keeps_its_own_forward():
    assert llama_decode.build(_tiny().to(torch.float16)) is None


def test_where_onednn_cannot_pack_the_dtype_the_model_keeps_its_own_forward(
    unpackable_model_and_tokenizer, caplog
):
    model, _ = unpackable_model_and_tokenizer
    assert llama_decode.build(model) is None
    # Asked before packing: no failed attempt, no warning in the operator's log.
    assert "fast decode step unavailable" not in caplog.text


def test_where_onednn_packs_the_dtype_the_fast_step_is_built(packed_model_and_tokenizer):
    model, _ = packed_model_and_tokenizer
    assert isinstance(llama_decode.build(model), llama_decode.LlamaDecodeStep)
