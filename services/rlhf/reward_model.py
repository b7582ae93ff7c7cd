"""Reward model training with the paper's K-wise loss, calibration and evaluation.

For a prompt with K ranked answers, InstructGPT minimises
``-1/C(K,2) * sum over pairs (w better than l) of log sigmoid(r_w - r_l)``
with all pairs of one prompt in one batch element: each answer runs through the
model once and every pair reuses those scores, and each prompt weighs the same
however many answers it has. Plain pairs (pairwise votes, thumbs-derived pairs)
are the K=2 case. Ties carry no preference and are dropped, as the paper did.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from services.rlhf.checkpoint import epoch_order, fingerprint
from services.rlhf.config import option
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.loop import (
    StepReport,
    optimiser_and_checkpoints,
    run_steps,
    seed_fresh_run,
)
from services.rlhf.reward_reading import read_rewards, reward_input
from services.rlhf.tokenization import Message, pad

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    """The judged answers to one prompt: ``pairs`` are (better, worse) indices into ``answers``."""

    prompt: tuple[Message, ...] | list[Message]
    answers: tuple[str, ...] | list[str]
    pairs: tuple[tuple[int, int], ...] | list[tuple[int, int]]

    def __post_init__(self) -> None:
        for better, worse in self.pairs:
            if better == worse or not (
                0 <= better < len(self.answers) and 0 <= worse < len(self.answers)
            ):
                raise ValueError(
                    f"pair {(better, worse)} does not name two of the {len(self.answers)} answers"
                )

    @classmethod
    def from_ranks(
        cls, prompt: Sequence[Message], answers: Sequence[str], ranks: Sequence[int]
    ) -> Comparison:
        """A ranking: ``ranks[i]`` is answer i's place (0 = best); equal places are ties."""
        if len(ranks) != len(answers):
            raise ValueError("one rank per answer")
        pairs = [
            (i, j) for i in range(len(answers)) for j in range(len(answers)) if ranks[i] < ranks[j]
        ]
        return cls(list(prompt), list(answers), pairs)


@dataclass
class RewardConfig:
    lr: float = option(
        9e-6,
        "Peak learning rate: the paper's. On the 135M base model 1e-5, 3e-5 and 1e-4 all "
        "reached full held-out accuracy on a synthetic K=4 task in one epoch "
        "(benchmarks/cpu_defaults.py), so there is no measured reason to move from it yet.",
    )
    epochs: int = option(1, "Passes over the comparisons (the paper: one, more overfits).")
    prompts_per_batch: int = option(
        8,
        "Prompts (comparison groups) per optimizer step. The paper: 64. On 2 CPU cores 4 and 8 "
        "ran at 4.7-5.2 comparisons/s, 16 at 4.5 (benchmarks/cpu_defaults.py).",
    )
    max_length: int = option(512, "Most tokens of prompt + answer; longer ones are cut.")
    warmup_ratio: float = option(0.05, "Fraction of steps with a linear warm-up.")
    min_lr_ratio: float = option(0.1, "Cosine decay ends at lr * this (the paper: 10%).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    adam_betas: tuple[float, float] = option((0.9, 0.95), "Adam beta1, beta2 (the paper's).")
    max_grad_norm: float = option(1.0, "Gradient clipping by global norm.")
    bf16: bool = option(
        False,
        "Run forward and backward under bf16 autocast (weights and Adam stay fp32): faster on "
        "GPUs and on CPUs with bf16 instructions; rewards are still read in fp32.",
    )
    train_top_layers: int = option(
        0,
        "Train only the top N transformer blocks (with the final norm and the head); 0 trains "
        "all. Fewer trained blocks: a cheaper backward pass (see ScalarHeadModel).",
    )
    seed: int = option(0, "Seeds the data order.")
    log_every: int = option(10, "Log loss and rate every this many steps.")
    checkpoint_every: int = option(
        50, "Write a resumable checkpoint every this many steps (with a checkpoint folder)."
    )


@dataclass
class RewardResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    comparisons_per_second: float = 0.0
    completed: bool = True


def kwise_loss(
    rewards: torch.Tensor, pairs: torch.Tensor, pair_group: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """Mean over groups of the mean over a group's pairs of -log sigmoid(r_better - r_worse).

    ``rewards``: (answers,) scores of every answer in the batch, each computed once.
    ``pairs``: (P, 2) global (better, worse) indices into ``rewards``.
    ``pair_group``: (P,) which group each pair belongs to.
    A full ranking of K answers has C(K,2) pairs, so its mean is the paper's 1/C(K,2) sum.
    """
    per_pair = -F.logsigmoid(rewards[pairs[:, 0]] - rewards[pairs[:, 1]])
    totals = torch.zeros(n_groups, dtype=per_pair.dtype, device=per_pair.device)
    counts = torch.zeros(n_groups, dtype=per_pair.dtype, device=per_pair.device)
    totals.index_add_(0, pair_group, per_pair)
    counts.index_add_(0, pair_group, torch.ones_like(per_pair))
    return (totals / counts.clamp(min=1))[counts > 0].mean()


@dataclass
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pairs: torch.Tensor
    pair_group: torch.Tensor
    n_groups: int


def _collate(tokenizer, groups: Sequence[Comparison], max_length: int, device) -> _Batch:
    """Every answer of every group once, as rows of one padded batch, with global pair indices."""
    sequences, pairs, pair_group = [], [], []
    for g, comparison in enumerate(groups):
        offset = len(sequences)
        for answer in comparison.answers:
            sequences.append(
                reward_input(tokenizer, comparison.prompt, answer, max_length).input_ids
            )
        for better, worse in comparison.pairs:
            pairs.append((offset + better, offset + worse))
            pair_group.append(g)
    ids, mask = pad(sequences, tokenizer.pad_token_id)
    return _Batch(
        ids.to(device),
        mask.to(device),
        torch.tensor(pairs, dtype=torch.long, device=device).reshape(-1, 2),
        torch.tensor(pair_group, dtype=torch.long, device=device),
        len(groups),
    )


def train_reward_model(
    model: ScalarHeadModel,
    tokenizer,
    comparisons: Sequence[Comparison],
    config: RewardConfig,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    stop_after_steps: int | None = None,
) -> RewardResult:
    """Train ``model`` in place on the comparisons with the K-wise loss.

    With ``checkpoint_dir``, a resumable checkpoint is written every
    ``config.checkpoint_every`` steps, on stopping and at the end, and a run with
    ``resume`` continues from it (same config and data), reaching the same weights as
    an uninterrupted run. ``stop_after_steps`` ends the run early (time-boxed runs,
    tests); the schedule still spans the whole run.
    """
    usable = [c for c in comparisons if c.pairs]
    if not usable:
        raise ValueError("no comparison has a pair to learn from (all ties?)")
    steps_per_epoch = math.ceil(len(usable) / config.prompts_per_batch)
    total_steps = steps_per_epoch * config.epochs
    data_id = fingerprint([[list(c.prompt), list(c.answers), list(c.pairs)] for c in usable])
    model.train_only_top_layers(config.train_top_layers)  # before the optimizer picks params
    optimizer, scheduler, checkpoints = optimiser_and_checkpoints(
        model, config, total_steps, data_id, checkpoint_dir
    )
    saved = checkpoints.restore() if resume else None
    result = RewardResult(steps=0)
    if saved is not None:
        result.steps, result.losses = saved["step"], list(saved["losses"])
        log.info("resuming reward model training at step %d of %d", result.steps, total_steps)
    seed_fresh_run(config.seed, resumed=saved is not None)

    def state() -> dict[str, Any]:
        return {"step": result.steps, "losses": result.losses}

    def one_step(step: int) -> StepReport:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = epoch_order(len(usable), config.seed, epoch)
        chosen = order[in_epoch * config.prompts_per_batch :][: config.prompts_per_batch]
        batch = _collate(tokenizer, [usable[i] for i in chosen], config.max_length, model.device)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            rewards = model.rewards(batch.input_ids, batch.attention_mask)
        loss = kwise_loss(rewards, batch.pairs, batch.pair_group, batch.n_groups)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        result.steps = step + 1
        result.losses.append(loss.item())
        return StepReport({"loss": loss.item()}, items=len(batch.pairs))

    stats = run_steps(
        "reward model",
        start=result.steps,
        stop_after=stop_after_steps,
        train=(model,),
        total=total_steps,
        run_step=one_step,
        checkpoints=checkpoints,
        state=state,
        progress=progress,
        logger=log,
        log_every=config.log_every,
        items_name="comparisons",
    )
    result.completed = result.steps >= total_steps
    result.comparisons_per_second = stats.items_per_second
    return result


@torch.no_grad()
def accuracy_by_group(
    model: ScalarHeadModel,
    tokenizer,
    comparisons: Sequence[Comparison],
    max_length: int = 512,
    batch_size: int = 16,
) -> list[float]:
    """Per comparison group (those with pairs), the fraction of its (better, worse) pairs the
    model orders correctly; an exact tie counts half. Groups are the units a gate resamples."""
    comparisons = [c for c in comparisons if c.pairs]
    items = [(c.prompt, a) for c in comparisons for a in c.answers]
    scores = read_rewards(model, tokenizer, items, max_length, batch_size)
    accuracies, offset = [], 0
    for comparison in comparisons:
        correct = 0.0
        for better, worse in comparison.pairs:
            diff = scores[offset + better] - scores[offset + worse]
            correct += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
        accuracies.append(correct / len(comparison.pairs))
        offset += len(comparison.answers)
    return accuracies


def pairwise_accuracy(
    model: ScalarHeadModel,
    tokenizer,
    comparisons: Sequence[Comparison],
    max_length: int = 512,
    batch_size: int = 16,
) -> float:
    """Fraction of (better, worse) pairs the model orders correctly; an exact tie counts half."""
    per_group = accuracy_by_group(model, tokenizer, comparisons, max_length, batch_size)
    return pooled_accuracy(per_group, comparisons)


def pooled_accuracy(per_group: Sequence[float], comparisons: Sequence[Comparison]) -> float:
    """The pairwise accuracy over all pairs, from :func:`accuracy_by_group`'s answer for the
    same ``comparisons`` (each group weighed by its pairs), without scoring them again."""
    pairs = [len(c.pairs) for c in comparisons if c.pairs]
    if not pairs:
        raise ValueError("no pairs to evaluate")
    return sum(a * n for a, n in zip(per_group, pairs, strict=True)) / sum(pairs)


def centre_on_references(
    model: ScalarHeadModel,
    tokenizer,
    references: Sequence[tuple[Sequence[Message], str]],
    max_length: int = 512,
) -> float:
    """Shift the head's bias so the reference answers score 0 on average; returns the shift.

    References are demonstrations, or the current policy's answers when there are
    none. A centred RM makes rewards comparable across RM versions and keeps PPO's
    value targets near 0 at the start.
    """
    if not references:
        raise ValueError("need reference answers to centre the rewards on")
    mean = sum(read_rewards(model, tokenizer, references, max_length)) / len(references)
    model.shift_bias(-mean)
    return -mean
