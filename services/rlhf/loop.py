"""The training-loop skeleton SFT, the reward model and PPO share.

Each trainer supplies what one step does; the skeleton does the rest one way for all three:
the progress bar, a log line with the rate every ``log_every`` steps, a checkpoint after each
step (every ``checkpoint_every``) and when stopping, and the models' train/eval mode (set to
train for the run and given back as it was). Seeding is :func:`seed_fresh_run`: a fresh run
seeds torch's global generator from the config, a resumed one keeps the restored state.

A stop asked for with :func:`request_stop` (a process's SIGTERM handler calls it) ends a
running loop after its current step: the loop saves a checkpoint at the step it reached and
raises :class:`StopRequested`, so a resumed run loses no finished step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from services.rlhf.checkpoint import RunCheckpoints
from services.rlhf.config import to_dict
from services.rlhf.optim import adamw_with_schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepReport:
    """What one step did: numbers for the log line and the bar, and how many items (examples,
    comparisons, episodes) it used, for the rate."""

    metrics: dict[str, float]
    items: int = 0


@dataclass
class LoopStats:
    items: int = 0
    seconds: float = 0.0

    @property
    def items_per_second(self) -> float:
        return self.items / max(self.seconds, 1e-9)


class StopRequested(Exception):
    """A loop ended early because a stop was asked for; its checkpoint holds ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step}, checkpoint saved")
        self.step = step


_stop = threading.Event()
_running = threading.Event()


def request_stop() -> None:
    """Ask the running loop (or the next one to start) to end after its current step, saving
    a checkpoint there. Safe to call from a signal handler."""
    _stop.set()


def loop_running() -> bool:
    """Whether a loop is running now (so a stop will be saved rather than lost)."""
    return _running.is_set()


# Config fields that do not change what a run computes: they may differ when a run resumes.
RESUME_NEUTRAL_FIELDS = frozenset({"checkpoint_every", "log_every"})


def optimiser_and_checkpoints(
    model: torch.nn.Module,
    config: Any,
    total_steps: int,
    data_id: str,
    checkpoint_dir: Any,
) -> tuple[torch.optim.Optimizer, Any, RunCheckpoints]:
    """AdamW with the config's schedule over ``total_steps``, and the run's checkpoints of
    the model, optimiser and schedule (keyed by the config and the data's fingerprint)."""
    optimizer, scheduler = adamw_with_schedule(model.parameters(), config, total_steps)
    checkpoints = RunCheckpoints(
        checkpoint_dir,
        {"model": model},
        {"optimizer": optimizer, "scheduler": scheduler},
        to_dict(config),
        data_id,
        RESUME_NEUTRAL_FIELDS,
        config.checkpoint_every,
    )
    return optimizer, scheduler, checkpoints


def seed_fresh_run(seed: int, resumed: bool) -> None:
    """Seed torch's global generator on a fresh run; a resumed run keeps what it restored."""
    if not resumed:
        torch.manual_seed(seed)


@contextmanager
def training_mode(*models: torch.nn.Module) -> Iterator[None]:
    """The models in train mode for the run, each given back in the mode it was in."""
    modes = [model.training for model in models]
    for model in models:
        model.train()
    try:
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


def run_steps(
    name: str,
    *,
    start: int,
    total: int,
    run_step: Callable[[int], StepReport | None],
    checkpoints: RunCheckpoints,
    state: Callable[[], dict[str, Any]],
    progress: bool = True,
    log_every: int = 1,
    unit: str = "step",
    items_name: str = "examples",
    logger: logging.Logger = log,
    stop_after: int | None = None,
    train: tuple[torch.nn.Module, ...] = (),
) -> LoopStats:
    """Run steps ``start`` .. ``total - 1``, or only up to ``stop_after`` steps in all (time-boxed
    runs, tests: the schedule still spans ``total``), with the ``train`` models in train mode
    (:func:`training_mode`). ``run_step(step)``
    does step number ``step`` (0-based) and returns its report, or None when there is nothing
    left to train on (the loop ends there). Checkpoints after each step and at the stop.
    Progress lines go to ``logger`` (the trainer's own, so they are filtered by its name)."""
    end = total if stop_after is None else min(total, stop_after)
    stats = LoopStats()
    started = time.perf_counter()
    step = start
    bar = tqdm(total=total, initial=start, desc=name, disable=not progress, unit=unit)
    with training_mode(*train):
        _running.set()
        try:
            while step < end:
                report = run_step(step)
                if report is None:
                    logger.info("%s: no more data after %d %ss", name, step, unit)
                    break
                step += 1
                stats.items += report.items
                stats.seconds = time.perf_counter() - started
                bar.update(1)
                if step % log_every == 0 or step == end:
                    shown = {key: f"{value:.4g}" for key, value in report.metrics.items()}
                    bar.set_postfix(
                        **shown, **{f"{items_name}_per_s": f"{stats.items_per_second:.1f}"}
                    )
                    logger.info(
                        "%s %s %d/%d %s %s/s %.1f",
                        name,
                        unit,
                        step,
                        total,
                        " ".join(f"{key} {value}" for key, value in shown.items()),
                        items_name,
                        stats.items_per_second,
                        extra={
                            unit: step,
                            **report.metrics,
                            f"{items_name}_per_s": stats.items_per_second,
                        },
                    )
                checkpoints.after_step(step, state)
                if _stop.is_set():
                    checkpoints.at_stop(step, state)
                    _stop.clear()  # answered: a later loop in this process runs
                    logger.info("%s: stop requested; checkpoint saved at %s %d", name, unit, step)
                    raise StopRequested(step)
            checkpoints.at_stop(step, state)  # stopped early or finished between checkpoints
        finally:
            _running.clear()
            bar.close()
    stats.seconds = time.perf_counter() - started
    return stats
