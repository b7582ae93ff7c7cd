"""Batched sampling from a policy: used by PPO rollouts, evaluation and the simulator.

Prompts are left-padded so every row's next token sits in the same column; the prompt
pass fills a KV cache and each new token is one decode step on it, through the fast
Llama step (``llama_decode``: the same logits, a fraction of the time on CPU) where the
model has one. Returns the answer tokens per row, cut after the first end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from services.rlhf import llama_decode
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
    # Packed once per call, from the weights as they are now (PPO changes them between calls).
    step = llama_decode.build(model)
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start : start + batch_size]
        new_tokens, raw_logits = _decode(model, step, tokenizer, chunk, config, with_logprobs)
        if raw_logits is not None:
            token_logprobs = logprobs_from_logits(raw_logits, new_tokens).tolist()
        for i, row in enumerate(new_tokens.tolist()):
            length = row.index(eos) + 1 if eos in row else len(row)
            answers.append(row[:length])
            if with_logprobs:
                logprobs.append(token_logprobs[i][:length])
    model.train(was_training)
    texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
    return Rollout(prompt_ids, answers, texts, logprobs if with_logprobs else None)


def _decode(
    model,
    step,
    tokenizer,
    prompt_ids: list[list[int]],
    config: SamplingConfig,
    keep_logits: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The new tokens of left-padded prompts, (rows, steps), pad after a row's end of turn,
    and with ``keep_logits`` the raw logits (fp32, before temperature or truncation) each was
    chosen from (rows x steps x vocab: 200 MB for 16 rows of 64 tokens, so only when asked).

    The prompts go through the model's forward once; each later token through the fast
    decode step where the model has one (the same logits), else the forward again."""
    ids, mask = pad(prompt_ids, tokenizer.pad_token_id, side="left")
    ids, mask = ids.to(model.device), mask.to(model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = _last_logits(model, ids, mask, positions, cache)
    rows = ids.shape[0]
    done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    position = positions[:, -1:] + 1
    chosen, raw = [], []
    for index in range(config.max_new_tokens):
        token = _choose(logits, config).masked_fill(done, tokenizer.pad_token_id)
        chosen.append(token)
        if keep_logits:
            raw.append(logits)
        done |= token == tokenizer.eos_token_id
        if index + 1 == config.max_new_tokens or bool(done.all()):
            break
        mask = torch.cat((mask, torch.ones((rows, 1), dtype=mask.dtype, device=mask.device)), 1)
        if step is not None:
            logits = step(token[:, None], position, mask, cache)
        else:
            logits = _last_logits(model, token[:, None], mask, position, cache)
        position = position + 1
    return torch.stack(chosen, dim=1), torch.stack(raw, dim=1) if keep_logits else None


def _last_logits(model, ids, mask, positions, cache) -> torch.Tensor:
    """The model's forward over ``ids`` (appending to ``cache``): the last column's logits."""
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1
    )
    return out.logits[:, -1].float()


def _choose(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Each row's next token: the argmax, or a draw after temperature, top-k and top-p (in
    that order, as transformers applies them; at least one token always stays)."""
    if not config.do_sample:
        return logits.argmax(-1)
    scores = logits / config.temperature
    if config.top_k > 0:
        kth = torch.topk(scores, min(config.top_k, scores.shape[-1])).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        below = ordered.softmax(-1).cumsum(-1) <= 1 - config.top_p
        below[..., -1] = False
        scores = scores.masked_fill(below.scatter(-1, order, below), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1)[:, 0]
