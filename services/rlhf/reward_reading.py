"""Where a reward is read: the one rule shared by RM training, the reward service, evaluation
and PPO.

A reward model is trained on answers rendered through the chat template, the way the serving
stack stores them: prompt, answer text, the end-of-turn marker and whatever the template adds
after it (SmolLM2's adds a newline). Its score is the scalar head's output at the *last* of
those tokens (:meth:`ScalarHeadModel.rewards`). Reading it anywhere else (at the end-of-turn
token, as a PPO rollout cut at ``<|im_end|>`` would) asks the model a question it was never
trained on, and a trained RM read that way loses most of its accuracy.

So every reader goes through text: a generated answer is decoded as the serving stack serves
it (special tokens dropped) and re-encoded with :func:`reward_input`. PPO therefore sees
exactly the score the reward service returns for the same conversation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from services.rlhf.tokenization import Encoded, Message, encode_prompt_answer, pad


def reward_input(tokenizer, prompt: Sequence[Message], answer: str, max_length: int) -> Encoded:
    """The tokens a reward model reads for ``answer`` to ``prompt``; its score is taken at the
    last of them."""
    return encode_prompt_answer(tokenizer, prompt, answer, max_length)


def served_text(tokenizer, answer_ids: Sequence[int]) -> str:
    """A generated answer as the serving stack returns it: special tokens (the end-of-turn
    marker) dropped."""
    return tokenizer.decode(list(answer_ids), skip_special_tokens=True)


def ends_its_turn(tokenizer, answer_ids: Sequence[int]) -> bool:
    """Whether a generated answer ended with the end-of-turn token (not cut at the limit)."""
    return bool(answer_ids) and answer_ids[-1] == tokenizer.eos_token_id


def _device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def read_rewards(
    model: torch.nn.Module,
    tokenizer,
    items: Sequence[tuple[Sequence[Message], str]],
    max_length: int = 512,
    batch_size: int = 16,
) -> list[float]:
    """The reward of each (prompt, answer text), in order. ``model`` is a
    :class:`~services.rlhf.heads.ScalarHeadModel` or any module with the same ``rewards``."""
    device = _device(model)
    scores: list[float] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        encoded = [reward_input(tokenizer, p, a, max_length).input_ids for p, a in chunk]
        ids, mask = pad(encoded, tokenizer.pad_token_id)
        scores.extend(model.rewards(ids.to(device), mask.to(device)).float().tolist())
    return scores
