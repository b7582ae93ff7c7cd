"""How good is a policy: win rate under a judge, mean reward, KL to the reference, perplexity.

One function each, shared by the trainer's gates and the demo. A judge is any
callable ``judge(prompt, answer_a, answer_b) -> float`` returning 1 when A is
better, 0 when B is, 0.5 for a tie: the reward model (:func:`reward_model_judge`)
or, later, the simulated labelers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from services.rlhf.heads import ScalarHeadModel
from services.rlhf.lm_loss import IGNORE_INDEX, next_token_nll
from services.rlhf.reward_reading import read_rewards
from services.rlhf.sequences import build_response_batch, response_logprobs
from services.rlhf.tokenization import Message, pad

Judge = Callable[[Sequence[Message], str, str], float]


@dataclass(frozen=True)
class WinRate:
    wins: int
    losses: int
    ties: int

    @property
    def rate(self) -> float:
        """A's win rate with ties counted half (the paper's convention for preference)."""
        total = self.wins + self.losses + self.ties
        return (self.wins + 0.5 * self.ties) / total if total else float("nan")


def win_rate(
    prompts: Sequence[Sequence[Message]],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    judge: Judge,
) -> WinRate:
    """How often A's answer is preferred to B's on the same prompts."""
    if not (len(prompts) == len(answers_a) == len(answers_b)):
        raise ValueError("one answer from each policy per prompt")
    verdicts = [judge(p, a, b) for p, a, b in zip(prompts, answers_a, answers_b, strict=True)]
    return WinRate(
        wins=sum(v == 1.0 for v in verdicts),
        losses=sum(v == 0.0 for v in verdicts),
        ties=sum(v not in (0.0, 1.0) for v in verdicts),
    )


def bootstrap_means(values: Sequence[float], samples: int, seed: int = 0) -> torch.Tensor:
    """Sorted means of ``samples`` resamples (with replacement) of ``values``, each value a
    unit (a prompt's verdict): the percentile bootstrap's distribution of the mean."""
    if not values:
        raise ValueError("no values")
    data = torch.tensor(values, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    # In chunks of about a million picks, so a long evaluation stays small in memory.
    per_chunk = max(1, 1_000_000 // len(data))
    means = [
        data[
            torch.randint(
                len(data), (min(per_chunk, samples - start), len(data)), generator=generator
            )
        ].mean(dim=1)
        for start in range(0, samples, per_chunk)
    ]
    return torch.cat(means).sort().values


def win_rate_with_interval(
    verdicts: Sequence[float], samples: int, seed: int = 0, level: float = 0.9
) -> tuple[float, float, float]:
    """(win rate, lower, upper): the mean of per-prompt verdicts (1 win, 0.5 tie, 0 loss) and
    a percentile bootstrap interval at ``level``."""
    if not verdicts:
        raise ValueError("no verdicts")
    rate = sum(verdicts) / len(verdicts)
    means = bootstrap_means(verdicts, samples, seed)
    tail = (1 - level) / 2
    return (
        rate,
        float(means[int(tail * (samples - 1))]),
        float(means[int((1 - tail) * (samples - 1))]),
    )


def lower_confidence_bound(
    values: Sequence[float], samples: int, alpha: float, seed: int = 0
) -> float:
    """The one-sided (1 - ``alpha``) lower confidence bound of the mean of ``values`` (one per
    prompt or group, resampled as units): the ``alpha`` quantile of the bootstrap means. The
    mean lies below it with probability about ``alpha``; the gates' simulation tests measure
    how close "about" is at their sample sizes."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), not {alpha}")
    return float(bootstrap_means(values, samples, seed)[int(alpha * (samples - 1))])


def reward_model_judge(model: ScalarHeadModel, tokenizer, max_length: int = 512) -> Judge:
    def judge(prompt: Sequence[Message], answer_a: str, answer_b: str) -> float:
        a, b = read_rewards(model, tokenizer, [(prompt, answer_a), (prompt, answer_b)], max_length)
        return 1.0 if a > b else 0.0 if a < b else 0.5

    return judge


def mean_reward(
    model: ScalarHeadModel,
    tokenizer,
    prompts: Sequence[Sequence[Message]],
    answers: Sequence[str],
    max_length: int = 512,
) -> float:
    scores = read_rewards(model, tokenizer, list(zip(prompts, answers, strict=True)), max_length)
    return sum(scores) / len(scores)


@torch.no_grad()
def kl_to_reference(
    policy,
    reference,
    prompt_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 16,
) -> float:
    """Monte Carlo KL(policy || reference) per answer, on answers *sampled from the policy*:
    the mean over answers of sum_t (log pi(y_t) - log pi_ref(y_t)), in nats."""
    total = 0.0
    for start in range(0, len(answer_ids), batch_size):
        batch = build_response_batch(
            prompt_ids[start : start + batch_size], answer_ids[start : start + batch_size], pad_id
        )
        diff = response_logprobs(policy, batch.to(policy.device)) - response_logprobs(
            reference, batch.to(reference.device)
        ).to(policy.device)
        total += diff.sum().item()
    return total / len(answer_ids)


@torch.no_grad()
def perplexity(
    model, tokenizer, texts: Sequence[str], max_length: int = 512, batch_size: int = 8
) -> float:
    """exp(mean next-token NLL) over all tokens of plain texts: the alignment-tax measure."""
    nll_sum, tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        encoded = [
            tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            for text in texts[start : start + batch_size]
        ]
        ids, mask = pad(encoded, tokenizer.pad_token_id)
        ids, mask = ids.to(model.device), mask.to(model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        total, count = next_token_nll(logits, ids.masked_fill(mask == 0, IGNORE_INDEX))
        nll_sum += total.item()
        tokens += count
    return math.exp(nll_sum / tokens)
