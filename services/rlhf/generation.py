"""Batched sampling from a policy: used by PPO rollouts, evaluation and the simulator.

Prompts are left-padded so every row's next token sits in the same column, and
``model.generate`` reuses its KV cache across steps. Returns the answer tokens
per row, cut after the first end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.rlhf.config import option
from services.rlhf.ppo_math import logprobs_from_logits
from services.rlhf.tokenization import Message, encode_prompt, pad


@dataclass
class SamplingConfig:
    max_new_tokens: int = option(64, "Most tokens generated per answer.")
    do_sample: bool = option(True, "Sample (PPO rollouts) or decode greedily (evaluation).")
    temperature: float = option(1.0, "Softmax temperature; the paper sampled at 1.")
    top_p: float = option(1.0, "Nucleus sampling mass; 1 keeps the full distribution.")
    top_k: int = option(0, "Keep only the k most likely tokens; 0 turns it off.")
    max_prompt_tokens: int = option(384, "Longer prompts keep their last tokens.")


@dataclass
class Rollout:
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]
    texts: list[str]
    # Per answer token, log pi(token) under the unmodified distribution (temperature 1, no
    # top-k/top-p), read off the generation pass; only with ``with_logprobs=True``.
    logprobs: list[list[float]] | None = None


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[Message]],
    config: SamplingConfig,
    batch_size: int = 16,
    with_logprobs: bool = False,
) -> Rollout:
    """Sample (or greedily decode) one answer per prompt.

    ``with_logprobs`` also returns each answer token's log-probability, taken from the
    raw logits of the generation pass itself: PPO needs exactly these "old" log-probs,
    and reading them here saves a full forward pass over every rollout.
    """
    eos = tokenizer.eos_token_id
    prompt_ids = [encode_prompt(tokenizer, p, config.max_prompt_tokens) for p in prompts]
    answers: list[list[int]] = []
    logprobs: list[list[float]] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start : start + batch_size]
        ids, mask = pad(chunk, tokenizer.pad_token_id, side="left")
        sampling = {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k}
        out = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=config.max_new_tokens,
            do_sample=config.do_sample,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
            output_logits=with_logprobs,
            return_dict_in_generate=True,
            **(sampling if config.do_sample else {}),
        )
        new_tokens = out.sequences[:, ids.shape[1] :]
        if with_logprobs:
            # out.logits: one (rows, vocab) tensor per step, before any sampling warper.
            steps = torch.stack(out.logits, dim=1)
            token_logprobs = logprobs_from_logits(steps, new_tokens).tolist()
        for i, row in enumerate(new_tokens.tolist()):
            length = row.index(eos) + 1 if eos in row else len(row)
            answers.append(row[:length])
            if with_logprobs:
                logprobs.append(token_logprobs[i][:length])
    model.train(was_training)
    texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
    return Rollout(prompt_ids, answers, texts, logprobs if with_logprobs else None)
