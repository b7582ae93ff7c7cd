"""What a stage is given and what it gives back.

A heavy stage runs as ``python -m services.trainer.stage_main <work_dir>`` in a fresh process
(a spawned subprocess of the worker, or a Kubernetes Job's pod), so the worker never imports
torch or touches CUDA. The worker writes ``job.json`` (the run, the stage, the outputs of the
stages before it) into the stage's work folder; the stage writes ``result.json`` there and
keeps its checkpoints beside it, so a stage restarted after a crash resumes where it was.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from services.common.atomic_files import write_atomically
from services.common.registry import ModelRegistry, VersionInfo
from services.trainer.settings import TrainerSettings

JOB_FILE = "job.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class StageResult:
    # done: the stage produced its outputs; rejected: a gate said no (the run stops and the
    # pipeline marks the candidate rejected); waiting: too little data yet (the snapshot; the
    # run ends "waiting"). A crash is an exception, retried from the checkpoints; "failed" is
    # what the run driver records when the retries are spent or the time limit is passed.
    status: Literal["done", "rejected", "waiting", "failed"]
    outputs: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def write(self, work_dir: Path) -> None:
        write_atomically(work_dir / RESULT_FILE, json.dumps(asdict(self), sort_keys=True))

    @classmethod
    def read(cls, work_dir: Path) -> StageResult:
        return cls(**json.loads((work_dir / RESULT_FILE).read_text()))


@dataclass(frozen=True)
class StageContext:
    run_id: str
    stage: str
    # Outputs of the stages done before this one, by stage name.
    inputs: dict[str, dict[str, Any]]
    work_dir: Path
    settings: TrainerSettings

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.settings.model_store_dir)

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    def write_job(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        job = {"run_id": self.run_id, "stage": self.stage, "inputs": self.inputs}
        write_atomically(self.work_dir / JOB_FILE, json.dumps(job, sort_keys=True))

    @classmethod
    def from_work_dir(cls, work_dir: Path, settings: TrainerSettings) -> StageContext:
        job = json.loads((work_dir / JOB_FILE).read_text())
        return cls(job["run_id"], job["stage"], job["inputs"], work_dir, settings)

    def version_made_by_this_run(self, role: str) -> VersionInfo | None:
        """The candidate this run's stage already registered (a retried stage reuses it
        instead of registering a second one)."""
        for info in self.registry.versions(role):
            config = info.manifest.config
            if config.get("trainer_run") == self.run_id and config.get("stage") == self.stage:
                return info
        return None

    def provenance(self) -> dict[str, str]:
        """What a version's manifest records about the run that made it."""
        return {"trainer_run": self.run_id, "stage": self.stage}
