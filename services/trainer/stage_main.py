"""``python -m services.trainer.stage_main <work_dir>``: run one heavy stage in this process.

Started by an executor (a spawned subprocess of the train worker, or a Kubernetes Job's pod)
with the worker's environment. Exit status 0 means a result.json was written (done or
rejected); anything else is a crash the worker retries, resuming from the checkpoints in the
same folder. SIGTERM (a cancel, a lost lease) stops it: a training loop after its current step,
saving a checkpoint there, anything else at once; a resumed attempt starts from the last
checkpoint.
"""

from __future__ import annotations

from services.common.openmp import keep_workers_spinning

keep_workers_spinning()  # before torch is imported

import signal
import sys
from collections.abc import Callable
from pathlib import Path

from services.common.logging_setup import configure_logging
from services.rlhf.loop import StopRequested, loop_running, request_stop
from services.trainer.settings import TrainerSettings
from services.trainer.stages import policy, reward
from services.trainer.stages.context import StageContext, StageResult

HEAVY_STAGES: dict[str, Callable[[StageContext], StageResult]] = {
    "reward_model": reward.train,
    "judge_model": reward.train_judge,
    "rm_gate": reward.gate,
    "ppo": policy.train,
    "policy_gate": policy.gate,
}


# The exit status of a stage stopped by SIGTERM, as a process killed by it reports.
STOPPED_EXIT = 128 + signal.SIGTERM


def stop_on_sigterm() -> None:
    """SIGTERM (a cancel, a lost lease, a pod's eviction): a training loop ends after its
    current step with a checkpoint there (so a resumed stage loses no finished step); with no
    loop running (loading, a gate) there is nothing to save and the stage exits at once."""

    def handle(_signum, _frame) -> None:
        request_stop()
        if not loop_running():
            raise SystemExit(STOPPED_EXIT)

    signal.signal(signal.SIGTERM, handle)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m services.trainer.stage_main <work_dir>", file=sys.stderr)
        return 2
    settings = TrainerSettings()
    configure_logging("trainer-stage", settings.log_level, settings.log_format)
    ctx = StageContext.from_work_dir(Path(args[0]), settings)
    stop_on_sigterm()
    try:
        result = HEAVY_STAGES[ctx.stage](ctx)
    except StopRequested as stopped:
        print(f"{ctx.stage}: {stopped}", file=sys.stderr)
        return STOPPED_EXIT
    result.write(ctx.work_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
