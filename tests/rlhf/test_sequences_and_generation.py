import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.rlhf import llama_decode
from services.rlhf.generation import SamplingConfig, generate
from services.rlhf.sequences import build_response_batch, response_logprobs

# Generation decodes through the fast step where the CPU packs the weights, else through the
# model's forward: `make test` runs these on both (FLYWHEEL_CPU_FEATURES=baseline).
pytestmark = pytest.mark.cpu_paths

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Please write a long and detailed answer about the sea."}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_answers_start_in_one_column_and_logprobs_match_unpadded_rows(tiny):
    model, tokenizer = tiny
    prompts = [[1, 5, 6], [1, 7, 8, 9, 10, 11]]
    answers = [[20, 21, 22, 23], [30]]
    batch = build_response_batch(prompts, answers, tokenizer.pad_token_id)
    assert batch.prompt_width == 6
    assert batch.response_ids[:, 0].tolist() == [20, 30]
    assert batch.response_mask.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]

    with torch.no_grad():
        batched = response_logprobs(model, batch)
        for row, (p, a) in enumerate(zip(prompts, answers, strict=True)):
            ids = torch.tensor([p + a])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(p) - 1 : -1], dim=-1)
            alone = logp[torch.arange(len(a)), torch.tensor(a)]
            assert torch.allclose(batched[row, : len(a)], alone, atol=1e-4)
            assert (batched[row, len(a) :] == 0).all()


def test_greedy_rollout_tokens_are_the_argmax_of_the_scoring_pass(tiny):
    model, tokenizer = tiny
    config = SamplingConfig(do_sample=False, max_new_tokens=12)
    rollout = generate(model, tokenizer, PROMPTS, config)
    assert [len(a) for a in rollout.answer_ids] == [12, 12] or tokenizer.eos_token_id in sum(
        rollout.answer_ids, []
    )
    batch = build_response_batch(rollout.prompt_ids, rollout.answer_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        ).logits[:, batch.prompt_width - 1 : -1]
    argmax = logits.argmax(-1)
    for row, answer in enumerate(rollout.answer_ids):
        assert argmax[row, : len(answer)].tolist() == answer


def test_sampling_is_reproducible_with_a_seed_and_stops_at_end_of_turn(tiny):
    model, tokenizer = tiny
    config = SamplingConfig(do_sample=True, max_new_tokens=30, temperature=1.0)
    torch.manual_seed(7)
    first = generate(model, tokenizer, PROMPTS * 4, config)
    torch.manual_seed(7)
    second = generate(model, tokenizer, PROMPTS * 4, config)
    assert first.answer_ids == second.answer_ids
    eos = tokenizer.eos_token_id
    for answer in first.answer_ids:
        assert eos not in answer[:-1]  # nothing after the end of the turn
        assert len(answer) <= 30


def test_generation_logprobs_equal_a_scoring_pass(tiny):
    """PPO's old log-probs come from generation; they must be what a forward pass gives."""
    model, tokenizer = tiny
    torch.manual_seed(3)
    config = SamplingConfig(do_sample=True, max_new_tokens=10, temperature=1.0)
    rollout = generate(model, tokenizer, PROMPTS * 2, config, with_logprobs=True)
    batch = build_response_batch(rollout.prompt_ids, rollout.answer_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        scored = response_logprobs(model, batch)
    for row, logprobs in enumerate(rollout.logprobs):
        assert len(logprobs) == len(rollout.answer_ids[row])
        assert torch.allclose(torch.tensor(logprobs), scored[row, : len(logprobs)], atol=1e-4)
    assert generate(model, tokenizer, PROMPTS, config).logprobs is None


def test_greedy_answers_are_transformers_generates_own(tiny):
    """The decode loop (the fast Llama step after the prompt pass) changes no token."""
    model, tokenizer = tiny
    config = SamplingConfig(do_sample=False, max_new_tokens=12)
    rollout = generate(model, tokenizer, PROMPTS, config)
    eos = tokenizer.eos_token_id
    for prompt_ids, answer in zip(rollout.prompt_ids, rollout.answer_ids, strict=True):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False, eos_token_id=eos
            )
        expected = out[0, len(prompt_ids) :].tolist()
        assert answer == expected[: expected.index(eos) + 1 if eos in expected else None]


@pytest.mark.parametrize("truncation", [{"top_k": 1}, {"top_p": 1e-6}], ids=["top-k", "top-p"])
def test_sampling_truncated_to_the_likeliest_token_is_greedy(tiny, truncation):
    model, tokenizer = tiny
    greedy = generate(model, tokenizer, PROMPTS, SamplingConfig(do_sample=False))
    torch.manual_seed(11)
    sampled = generate(model, tokenizer, PROMPTS, SamplingConfig(do_sample=True, **truncation))
    assert sampled.answer_ids == greedy.answer_ids


def test_without_the_fast_step_the_models_forward_decodes_the_same_tokens(tiny, monkeypatch):
    """Models the fast step does not cover (other architectures, GPUs) decode through their
    own forward, with the same tokens and log-probs."""
    model, tokenizer = tiny
    config = SamplingConfig(do_sample=False, max_new_tokens=12)
    fast = generate(model, tokenizer, PROMPTS, config, with_logprobs=True)
    monkeypatch.setattr(llama_decode, "build", lambda _model: None)
    plain = generate(model, tokenizer, PROMPTS, config, with_logprobs=True)
    assert plain.answer_ids == fast.answer_ids
    for ours, theirs in zip(plain.logprobs, fast.logprobs, strict=True):
        assert torch.allclose(torch.tensor(ours), torch.tensor(theirs), atol=1e-5)
