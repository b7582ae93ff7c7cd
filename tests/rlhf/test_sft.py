import logging
import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.rlhf.checkpoint import read_extra
from services.rlhf.lm_loss import IGNORE_INDEX, next_token_nll
from services.rlhf.sft import (
    Demonstration,
    SFTConfig,
    _optimizer_step,
    answer_logits,
    collate,
    train_sft,
)
from services.rlhf.tokenization import encode_prompt, encode_prompt_answer

LETTERS = "ABCDEFGH"


def letter_demos() -> list[Demonstration]:
    """Eight prompts "Say X" whose answer is "X X X": memorisable, and needs the prompt."""
    return [
        Demonstration([{"role": "user", "content": f"Say {x}"}], f"{x} {x} {x}") for x in LETTERS
    ]


def mixed_length_demos() -> list[Demonstration]:
    """Answers of very different lengths, so the loss normalisation matters."""
    answers = ["yes", "one two three four five six seven", "ok then", "a b c d e f g h i j k l"]
    return [
        Demonstration([{"role": "user", "content": f"Question {i}?"}], answer)
        for i, answer in enumerate(answers * 2)
    ]


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def load_model(tiny_model_dir):
    """A fresh copy of the tiny model each call (same initial weights every time)."""
    return lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def test_labels_and_loss_cover_answer_tokens_only(load_model, tokenizer):
    model = load_model()
    demos = mixed_length_demos()[:3]
    encoded = [encode_prompt_answer(tokenizer, d.messages, d.answer, 128) for d in demos]
    batch = collate(encoded, tokenizer.pad_token_id)

    # Labels: -100 exactly on prompt and pad positions, the input ids on the answer.
    for row, e in enumerate(encoded):
        labels = batch.labels[row].tolist()
        answer = slice(e.prompt_len, len(e.input_ids))
        assert labels[answer] == e.input_ids[answer]
        assert all(x == IGNORE_INDEX for x in labels[: e.prompt_len] + labels[len(e.input_ids) :])
        assert batch.attention_mask[row].sum() == len(e.input_ids)
    assert batch.input_ids.shape[1] == max(len(e.input_ids) for e in encoded)  # dynamic padding

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = logits.detach().requires_grad_(True)
    total, count = next_token_nll(logits, batch.labels)

    # By hand: the logit at column c predicts token c + 1; sum over answer tokens only.
    logprobs = torch.log_softmax(logits.detach(), dim=-1)
    expected, n = 0.0, 0
    for row, e in enumerate(encoded):
        for c in range(e.prompt_len - 1, len(e.input_ids) - 1):
            expected -= logprobs[row, c, e.input_ids[c + 1]].item()
            n += 1
    assert count == n == sum(e.answer_len for e in encoded)
    assert total.item() == pytest.approx(expected, rel=1e-5)

    # Computing only the columns that can predict an answer token changes nothing.
    trimmed = answer_logits(model, batch)
    assert trimmed.shape[1] < logits.shape[1]
    trimmed_total, trimmed_count = next_token_nll(trimmed, batch.labels)
    assert trimmed_count == count
    assert trimmed_total.item() == pytest.approx(total.item(), rel=1e-5)

    # Logits that predict prompt or padding tokens get no gradient at all.
    total.backward()
    touched = logits.grad.abs().sum(dim=-1) > 0
    for row, e in enumerate(encoded):
        predicts_answer = torch.zeros(logits.shape[1], dtype=torch.bool)
        predicts_answer[e.prompt_len - 1 : len(e.input_ids) - 1] = True
        assert torch.equal(touched[row], predicts_answer)


def test_learns_and_memorises_the_demonstrations(load_model, tokenizer):
    model = load_model()
    # A high lr only because the tiny random model starts from nothing.
    config = SFTConfig(
        lr=1e-2, epochs=80, batch_size=4, grad_accum_steps=2, max_length=64, warmup_ratio=0.1
    )
    result = train_sft(model, tokenizer, letter_demos(), config, progress=False)

    assert result.steps == 80 and result.completed
    assert len(result.losses) == 80
    assert result.final_loss < 0.1 * result.losses[0]

    # Greedy decoding reproduces the memorised answers, and the end-of-turn token stops it.
    right = 0
    for x in LETTERS:
        prompt = encode_prompt(tokenizer, [{"role": "user", "content": f"Say {x}"}])
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(prompt) :]
        answer = tokenizer.decode(out, skip_special_tokens=True)
        right += answer == f"{x} {x} {x}" and out[-1].item() == tokenizer.eos_token_id
    assert right >= 6, f"only {right} of {len(LETTERS)} answers memorised"


def test_training_follows_the_schedule_and_logs_progress(load_model, tokenizer, caplog):
    # 8 demos, 4 per step, 5 epochs = 10 steps, 2 of warm-up.
    config = SFTConfig(
        lr=1e-4, epochs=5, batch_size=4, grad_accum_steps=1, max_length=64, warmup_ratio=0.2
    )
    with caplog.at_level(logging.INFO, logger="services.rlhf.sft"):
        result = train_sft(load_model(), tokenizer, letter_demos(), config, progress=False)
    assert result.learning_rates[1] == pytest.approx(1e-4)
    assert result.learning_rates[-1] == pytest.approx(1e-5)
    # A log line every log_every (10) steps with loss, lr and throughput.
    lines = [r.getMessage() for r in caplog.records if r.name == "services.rlhf.sft"]
    assert len(lines) == 1 and "step 10/10" in lines[0] and "examples/s" in lines[0]


def test_gradient_accumulation_matches_one_big_batch(load_model, tokenizer):
    """Per-token normalisation over the whole optimizer step: splitting it changes nothing."""
    demos = mixed_length_demos()
    encoded = [encode_prompt_answer(tokenizer, d.messages, d.answer, 128) for d in demos[:4]]

    # Gradients, read off as the change of an SGD step with lr 1 and no clipping.
    deltas = []
    for batch_size, accum in [(4, 1), (2, 2), (1, 4)]:
        model = load_model()
        before = params(model)
        config = SFTConfig(batch_size=batch_size, grad_accum_steps=accum, max_grad_norm=1e9)
        sgd = torch.optim.SGD(model.parameters(), lr=1.0)
        _optimizer_step(model, sgd, encoded, tokenizer.pad_token_id, config)
        deltas.append({k: v - before[k] for k, v in params(model).items()})
    assert_same_params(deltas[0], deltas[1], atol=1e-6)
    assert_same_params(deltas[0], deltas[2], atol=1e-6)

    # ... and they are the gradient of the mean NLL over all answer tokens of the step.
    model = load_model()
    batch = collate(encoded, tokenizer.pad_token_id)
    total, count = next_token_nll(
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch.labels
    )
    (total / count).backward()
    grads = {k: -p.grad for k, p in model.named_parameters()}
    assert_same_params({k: deltas[0][k] for k in grads}, grads, atol=1e-6)

    # Whole runs with AdamW: two optimizer steps of 4 examples each, split or not.
    results = []
    for batch_size, accum in [(4, 1), (2, 2)]:
        model = load_model()
        config = SFTConfig(
            lr=1e-3, epochs=1, batch_size=batch_size, grad_accum_steps=accum, max_length=128
        )
        train_sft(model, tokenizer, demos, config, progress=False)
        results.append(params(model))
    assert_same_params(results[0], results[1], atol=1e-5)


def test_resumed_run_matches_an_uninterrupted_one(load_model, tokenizer, tmp_path):
    demos = letter_demos()
    # 8 demos, 4 per step: 2 steps per epoch, 3 epochs = 6 steps, checkpoints at 2 and 4.
    config = SFTConfig(
        lr=1e-3,
        epochs=3,
        batch_size=2,
        grad_accum_steps=2,
        max_length=64,
        warmup_ratio=0.2,
        checkpoint_every=2,
    )
    straight = load_model()
    full = train_sft(straight, tokenizer, demos, config, progress=False)

    # Interrupted mid-epoch, after step 3: a checkpoint is written on stopping.
    first = train_sft(
        load_model(), tokenizer, demos, config, tmp_path, progress=False, stop_after_steps=3
    )
    assert first.steps == 3 and not first.completed
    state = read_extra(tmp_path / "checkpoint")
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (3, 1, 1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]  # no temporary folder left behind

    # A fresh process: new model object with the initial weights; RNG disturbed meanwhile.
    torch.manual_seed(12345)
    resumed_model = load_model()
    resumed = train_sft(resumed_model, tokenizer, demos, config, tmp_path, progress=False)

    assert resumed.steps == full.steps == 6 and resumed.completed
    assert resumed.losses == pytest.approx(full.losses, abs=1e-6)
    assert_same_params(params(resumed_model), params(straight), atol=1e-6)

    # Resuming a finished run trains no more and loads its final weights (idempotent).
    again_model = load_model()
    again = train_sft(again_model, tokenizer, demos, config, tmp_path, progress=False)
    assert again.steps == 6 and math.isclose(again.final_loss, full.final_loss, abs_tol=1e-6)
    assert_same_params(params(again_model), params(straight), atol=1e-6)


def test_resume_refuses_a_different_config_or_data(load_model, tokenizer, tmp_path):
    config = SFTConfig(lr=1e-3, epochs=1, batch_size=4, grad_accum_steps=1, max_length=64)
    train_sft(load_model(), tokenizer, letter_demos(), config, tmp_path, progress=False)

    with pytest.raises(ValueError, match="lr"):
        train_sft(
            load_model(),
            tokenizer,
            letter_demos(),
            SFTConfig(**{**vars(config), "lr": 1.0}),
            tmp_path,
            progress=False,
        )
    with pytest.raises(ValueError, match="different training data"):
        train_sft(load_model(), tokenizer, letter_demos()[:6], config, tmp_path, progress=False)
    # Logging and checkpoint cadence do not change the run, so they may differ.
    relaxed = SFTConfig(**{**vars(config), "log_every": 1, "checkpoint_every": 7})
    assert train_sft(
        load_model(), tokenizer, letter_demos(), relaxed, tmp_path, progress=False
    ).completed


def test_a_checkpoint_moved_aside_by_a_crash_is_still_found(load_model, tokenizer, tmp_path):
    """A crash between the two renames of a save leaves only the old copy, moved aside."""
    config = SFTConfig(lr=1e-3, epochs=2, batch_size=4, grad_accum_steps=1, max_length=64)
    demos = letter_demos()
    train_sft(load_model(), tokenizer, demos, config, tmp_path, progress=False, stop_after_steps=2)
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.0123.old")
    (tmp_path / ".checkpoint.4567.tmp").mkdir()  # a half-written save: ignored, then removed
    resumed = train_sft(load_model(), tokenizer, demos, config, tmp_path, progress=False)
    assert resumed.steps == 4 and len(resumed.losses) == 4
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]
