"""Where a heavy stage runs: a subprocess of the worker (local) or a Kubernetes Job."""

from services.trainer.executors.base import Executor
from services.trainer.settings import TrainerSettings


def executor_for(settings: TrainerSettings) -> Executor:
    """The executor ``FLYWHEEL_TRAINER_EXECUTOR`` names (kubernetes imported only if used)."""
    if settings.executor == "kubernetes":
        from services.trainer.executors.kubernetes import (
            KubernetesExecutor,
            KubernetesExecutorSettings,
        )

        return KubernetesExecutor(KubernetesExecutorSettings())
    from services.trainer.executors.local import LocalExecutor

    return LocalExecutor()
