"""Prompt + answer batches laid out so that every answer starts in the same column.

Prompts are left-padded to a common width P and answers right-padded to T, so
column P + t holds answer token t in every row. PPO's per-token tensors
(logprobs, values, rewards) are then plain (batch, T) slices, with
``response_mask`` marking real answer tokens. Position ids are computed from
the attention mask so that left padding does not shift positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.rlhf.ppo_math import logprobs_from_logits
from services.rlhf.tokenization import pad


@dataclass
class ResponseBatch:
    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    position_ids: torch.Tensor  # (B, P + T)
    response_mask: torch.Tensor  # (B, T) float: 1 on real answer tokens
    prompt_width: int  # P

    def to(self, device) -> ResponseBatch:
        return ResponseBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.response_mask.to(device),
            self.prompt_width,
        )

    def rows(self, index: torch.Tensor) -> ResponseBatch:
        """The same layout for a subset of rows (minibatches, rollout chunks)."""
        return ResponseBatch(
            self.input_ids[index],
            self.attention_mask[index],
            self.position_ids[index],
            self.response_mask[index],
            self.prompt_width,
        )

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]


def build_response_batch(
    prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]], pad_id: int
) -> ResponseBatch:
    if any(len(a) == 0 for a in answer_ids):
        raise ValueError("every answer needs at least one token")
    prompts, prompt_mask = pad(prompt_ids, pad_id, side="left")
    answers, answer_mask = pad(answer_ids, pad_id, side="right")
    attention = torch.cat([prompt_mask, answer_mask], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return ResponseBatch(
        torch.cat([prompts, answers], dim=1),
        attention,
        positions,
        answer_mask.float(),
        prompts.shape[1],
    )


def response_logprobs(model, batch: ResponseBatch) -> torch.Tensor:
    """(B, T) log pi(answer token t | prompt, answer tokens < t); 0 on padding."""
    answer_width = batch.response_ids.shape[1]
    # The logit at column c predicts the token at c + 1: answer token t is predicted at
    # P + t - 1. Only those T columns (+ the last, dropped) go through the unembedding: over
    # a 49k vocabulary it is the costliest layer, and prompt columns would be thrown away.
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=answer_width + 1,
        use_cache=False,
    ).logits
    return logprobs_from_logits(logits[:, :-1], batch.response_ids) * batch.response_mask
