"""What an executor is given and what it reports back.

A heavy stage (training the reward model, PPO, the policy gate) never runs inside the Celery
worker: the worker hands a :class:`StageJob` to an executor, which runs the stage's command
in a fresh process (a spawned subprocess, or a pod of a Kubernetes Job using the same image)
and waits. The stage writes its result as JSON into ``job.work_dir`` (on the model-store
volume, which the worker and the Job share); the executor reports only how the process ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StageJob:
    run_id: str
    stage: str
    # The argv the stage runs as (same in the worker's venv and in the image).
    command: list[str]
    # Where the stage keeps its checkpoints and writes result.json.
    work_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    # The longest the stage may run (STAGE_TIME_LIMIT_S); None: no limit. Both executors
    # enforce it and report ``timed_out``.
    time_limit_s: float | None = None


@dataclass(frozen=True)
class StageExit:
    exit_code: int
    # The last lines the stage printed (stderr and stdout), for the run record.
    log_tail: str = ""
    # True when the executor stopped the stage because should_stop() said so.
    stopped: bool = False
    # True when the stage ran past job.time_limit_s and was stopped for it.
    timed_out: bool = False

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.stopped and not self.timed_out


class Executor(Protocol):
    def run(self, job: StageJob, should_stop: Callable[[], bool]) -> StageExit:
        """Run ``job`` to its end. ``should_stop`` is polled every few seconds; when it turns
        true (cancel requested, lease lost) the stage is stopped (SIGTERM, then SIGKILL after a
        grace period: the stage saves a checkpoint on SIGTERM) and ``stopped`` is set."""
        ...
