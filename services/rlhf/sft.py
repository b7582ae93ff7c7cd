"""Supervised fine-tuning on demonstrations: step 1 of the method.

The policy learns to write the labelers' answer to a chat prompt. Only answer
tokens are trained (prompt and padding are masked out of the loss), so the
model learns to answer, not to reproduce user turns or the system prompt.

Loss normalisation: the loss of one optimizer step is the mean negative
log-likelihood over *every answer token in the step*, however the step is split
into micro-batches for gradient accumulation. Each micro-batch contributes
``sum of its token NLLs / answer tokens in the whole step``, so batch_size=4
with no accumulation and batch_size=2 with two accumulation steps give the
same gradient. A consequence (the usual one for SFT): a long answer weighs more
than a short one, in proportion to its tokens.

Batches are padded to their longest sequence (dynamic padding) rather than
packed. Packing several demonstrations into one row needs the attention cut at
example boundaries (block-diagonal masks and reset positions), which on CPU
means dense 4D masks and a second code path; demonstrations here are short
and few, so the padding it would save is small, and one example per row keeps
"optimizer step = a fixed set of examples", which makes resuming exact.

Checkpoints are written atomically and hold everything a run's future depends
on (weights, optimizer, schedule, RNG states, position in the data), so an
interrupted run resumed from one reaches the same weights as an uninterrupted
run. The data order is a function of (seed, epoch) only, which is what lets a
resumed run skip exactly the batches already consumed.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.rlhf.checkpoint import epoch_order, fingerprint
from services.rlhf.config import option
from services.rlhf.lm_loss import IGNORE_INDEX, next_token_nll
from services.rlhf.loop import (
    StepReport,
    optimiser_and_checkpoints,
    run_steps,
    seed_fresh_run,
)
from services.rlhf.tokenization import Encoded, Message, encode_prompt_answer, pad

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Demonstration:
    """A chat prompt (the turns before the answer) and the answer a labeler wrote for it."""

    messages: tuple[Message, ...] | list[Message]
    answer: str


@dataclass
class SFTConfig:
    lr: float = option(
        1e-5,
        "Peak learning rate. A common choice for fine-tuning a ~135M model; not tuned here.",
    )
    epochs: int = option(
        2,
        "Passes over the demonstrations. The paper trained 16 (past the point where validation "
        "loss rises, because reward and preference kept improving); fewer suits CPU budgets.",
    )
    batch_size: int = option(8, "Demonstrations per forward pass (micro-batch).")
    grad_accum_steps: int = option(
        4, "Micro-batches per optimizer step; the step's batch is batch_size * this."
    )
    max_length: int = option(
        512, "Most tokens of prompt + answer; the prompt keeps its end, the answer is cut."
    )
    warmup_ratio: float = option(0.03, "Fraction of optimizer steps with a linear warm-up.")
    min_lr_ratio: float = option(
        0.1, "Cosine decay ends at lr * this (the paper's 10%, as for its reward model)."
    )
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Gradient clipping by global norm, per optimizer step.")
    adam_betas: tuple[float, float] = option((0.9, 0.95), "Adam beta1, beta2 (the paper's).")
    seed: int = option(0, "Seeds the data order and torch's RNG (dropout).")
    checkpoint_every: int = option(
        50, "Save a resumable checkpoint every this many optimizer steps (with a folder)."
    )
    log_every: int = option(10, "Log loss, learning rate and examples/s every this many steps.")


@dataclass
class SFTResult:
    steps: int  # optimizer steps done in total, including those before a resume
    final_loss: float  # mean answer-token NLL of the last step (nan if no step ran)
    losses: list[float] = field(default_factory=list)  # one per optimizer step, whole run
    learning_rates: list[float] = field(default_factory=list)  # the lr each step used
    completed: bool = True  # False when stopped early by ``stop_after_steps``


@dataclass
class SFTBatch:
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L): the input ids on answer tokens, IGNORE_INDEX elsewhere


def collate(encoded: Sequence[Encoded], pad_id: int) -> SFTBatch:
    """Right-pad to the longest sequence in the batch; labels only where the answer is."""
    ids, mask = pad([e.input_ids for e in encoded], pad_id, side="right")
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, e in enumerate(encoded):
        labels[row, e.prompt_len : len(e.input_ids)] = ids[row, e.prompt_len : len(e.input_ids)]
    return SFTBatch(ids, mask, labels)


def answer_logits(model, batch: SFTBatch) -> torch.Tensor:
    """Logits from the column before the earliest answer token to the end of the batch.

    The prompt's own predictions carry no loss, and the unembedding over a large
    vocabulary is the costliest layer of a small model (and its output the biggest
    tensor), so only the columns that can predict an answer token are computed.
    """
    answer_columns = (batch.labels != IGNORE_INDEX).any(dim=0).nonzero()
    first = int(answer_columns[0]) - 1 if len(answer_columns) else 0
    return model(
        input_ids=batch.input_ids.to(model.device),
        attention_mask=batch.attention_mask.to(model.device),
        logits_to_keep=batch.input_ids.shape[1] - max(first, 0),
        use_cache=False,
    ).logits


# --- training ----------------------------------------------------------------------------------


def train_sft(
    model,
    tokenizer,
    demos: Sequence[Demonstration],
    config: SFTConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> SFTResult:
    """Fine-tune ``model`` in place on the demonstrations.

    With ``checkpoint_dir``, a checkpoint is saved every ``config.checkpoint_every``
    optimizer steps, when stopping early and at the end; with ``resume`` a run
    continues from the checkpoint there (config and data must match). A finished
    run resumed again just loads its final weights, so calling this twice is safe.
    ``stop_after_steps`` ends the run after that many optimizer steps in total
    (time-boxed runs, tests); the schedule still spans the whole run, so resuming
    later carries on as if never stopped. Seeds torch's global RNG on a fresh start.
    """
    if not demos:
        raise ValueError("no demonstrations to train on")
    for name in ("epochs", "batch_size", "grad_accum_steps", "checkpoint_every", "log_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"SFTConfig.{name} must be at least 1")
    encoded = [
        encode_prompt_answer(tokenizer, d.messages, d.answer, config.max_length) for d in demos
    ]
    examples_per_step = config.batch_size * config.grad_accum_steps
    steps_per_epoch = math.ceil(len(encoded) / examples_per_step)
    total_steps = steps_per_epoch * config.epochs
    data_id = fingerprint([[list(d.messages), d.answer] for d in demos])
    optimizer, scheduler, checkpoints = optimiser_and_checkpoints(
        model, config, total_steps, data_id, checkpoint_dir
    )
    saved = checkpoints.restore() if resume else None
    run = _Progress()
    if saved is not None:
        run = _Progress(saved["step"], list(saved["losses"]), list(saved["learning_rates"]))
        log.info("resuming SFT from %s at step %d of %d", checkpoints.folder, run.step, total_steps)
    seed_fresh_run(config.seed, resumed=saved is not None)

    def state() -> dict[str, Any]:
        return {
            "step": run.step,
            # Position in the data, derivable from step but stated for whoever reads the file.
            "epoch": run.step // steps_per_epoch,
            "step_in_epoch": run.step % steps_per_epoch,
            "total_steps": total_steps,
            "losses": run.losses,
            "learning_rates": run.learning_rates,
        }

    order_of_epoch = functools.lru_cache(maxsize=1)(
        lambda epoch: epoch_order(len(encoded), config.seed, epoch)
    )

    def one_step(step: int) -> StepReport:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = order_of_epoch(epoch)
        chosen = [encoded[i] for i in order[in_epoch * examples_per_step :][:examples_per_step]]
        lr = scheduler.get_last_lr()[0]
        loss = _optimizer_step(model, optimizer, chosen, tokenizer.pad_token_id, config)
        scheduler.step()
        run.step = step + 1
        run.losses.append(loss)
        run.learning_rates.append(lr)
        return StepReport({"loss": loss, "lr": lr}, items=len(chosen))

    run_steps(
        "sft",
        start=run.step,
        stop_after=stop_after_steps,
        train=(model,),
        total=total_steps,
        run_step=one_step,
        checkpoints=checkpoints,
        state=state,
        progress=progress,
        logger=log,
        log_every=config.log_every,
    )
    return SFTResult(
        steps=run.step,
        final_loss=run.losses[-1] if run.losses else math.nan,
        losses=list(run.losses),
        learning_rates=list(run.learning_rates),
        completed=run.step >= total_steps,
    )


@dataclass
class _Progress:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)


def _optimizer_step(
    model, optimizer, examples: Sequence[Encoded], pad_id: int, config: SFTConfig
) -> float:
    """One optimizer step over ``examples`` in micro-batches; returns its mean token NLL."""
    micro = [
        collate(examples[i : i + config.batch_size], pad_id)
        for i in range(0, len(examples), config.batch_size)
    ]
    # Every answer token of the step weighs the same, however the step is split.
    step_tokens = sum(int((b.labels[:, 1:] != IGNORE_INDEX).sum()) for b in micro)
    if step_tokens == 0:
        raise ValueError("a batch has no answer tokens; is max_length too small?")
    total = 0.0
    for batch in micro:
        nll, _ = next_token_nll(answer_logits(model, batch), batch.labels.to(model.device))
        (nll / step_tokens).backward()
        total += nll.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / step_tokens
