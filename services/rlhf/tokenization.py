"""Turning chats into token ids the way the served model sees them, and batching them.

Training must see exactly the tokens that serving produces, so prompts always go
through the model's own chat template (with the generation prompt), and an
answer is the tokens the template adds after it: the text plus the end-of-turn
marker, which the policy must learn to emit and the reward model sees last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Message = dict[str, str]


@dataclass(frozen=True)
class Encoded:
    """One prompt + answer: ``input_ids[:prompt_len]`` is the prompt, the rest the answer."""

    input_ids: list[int]
    prompt_len: int

    @property
    def answer_len(self) -> int:
        return len(self.input_ids) - self.prompt_len


def encode_prompt(
    tokenizer, messages: Sequence[Message], max_length: int | None = None
) -> list[int]:
    """The prompt as the model sees it before answering; keeps the *last* tokens if too long."""
    ids = list(
        tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
    )
    return ids[-max_length:] if max_length is not None and len(ids) > max_length else ids


def encode_prompt_answer(
    tokenizer, messages: Sequence[Message], answer: str, max_length: int
) -> Encoded:
    """Prompt and answer tokens. Over ``max_length``, the prompt keeps its end (the question)
    and at least half the budget goes to the answer, whose end is cut."""
    prompt = encode_prompt(tokenizer, messages)
    prompt_text = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=False
    )
    full_text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template does not extend the prompt with the answer")
    # The answer is tokenised on its own, as generation produces it after the prompt's
    # tokens: an answer that starts with a newline must not merge with the prompt's last one.
    answer_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    if len(prompt) + len(answer_ids) > max_length:
        prompt_budget = max(max_length - len(answer_ids), max_length // 2)
        prompt = prompt[-prompt_budget:]
        answer_ids = answer_ids[: max_length - len(prompt)]
    return Encoded(prompt + answer_ids, len(prompt))


def pad(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) padded to the longest sequence: dynamic padding per batch."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def chat_template_prefix(tokenizer) -> list[int]:
    """The tokens every single-turn user prompt starts with (e.g. a default system block).

    Found as the common start of a few unlike prompts, so it never includes a token
    that merges with the user's text. Scoring caches its keys and values once.
    """
    renderings = [
        encode_prompt(tokenizer, [{"role": "user", "content": text}])
        for text in ("Hello there.", "1 + 1 = ?", "\u00bfQu\u00e9?")
    ]
    prefix = renderings[0]
    for other in renderings[1:]:
        same = 0
        while same < min(len(prefix), len(other)) and prefix[same] == other[same]:
            same += 1
        prefix = prefix[:same]
    return prefix
