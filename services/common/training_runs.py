"""A training run as every reader sees it: the stage table and the typed run summary.

The trainer writes runs (services/trainer/pipeline.py) and answers ``flywheel.trainer.status``
with :meth:`RunSummary.to_json`; `flywheel train status`, the gateway's status view (the chat
page) and the demo read the answer back with :meth:`RunSummary.from_json`. The stage names,
their order and which outputs are worth a glance live here only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

RunsIn = Literal["train worker", "own process"]


@dataclass(frozen=True)
class StageSpec:
    name: str
    # "own process": python -m services.trainer.stage_main, a subprocess of the train worker
    # or a Kubernetes Job's pod; "train worker": in the worker itself (quick, no torch).
    runs_in: RunsIn
    does: str
    # The outputs `flywheel train status` and the chat page show (every output is in --json).
    shown: tuple[str, ...] = ()


# In order: each stage follows the one above it; a run that passes them all ends succeeded.
STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "snapshot",
        "train worker",
        "export the comparisons since the last succeeded run; hold out by prompt; too few: "
        "the run waits for more data",
        ("groups", "heldout_groups", "pairs"),
    ),
    StageSpec(
        "reward_model",
        "own process",
        "train the reward model PPO will optimise, on one half of the training prompts",
        ("version", "heldout_accuracy"),
    ),
    StageSpec(
        "judge_model",
        "own process",
        "train the judge the policy gate asks, on the other half",
        ("version", "heldout_accuracy"),
    ),
    StageSpec(
        "rm_gate",
        "own process",
        "the new RM against the promoted one on the held-out groups (a lower bound)",
        (
            "heldout_accuracy",
            "accuracy_lower_bound",
            "gain_lower_bound",
            "decided_on",
            "threshold",
            "promoted",
        ),
    ),
    StageSpec(
        "ppo",
        "own process",
        "PPO-ptx from the promoted policy against the new RM",
        ("version", "objective/kl", "objective/scores"),
    ),
    StageSpec(
        "policy_gate",
        "own process",
        "the candidate against the promoted policy under the judge (a lower bound), the "
        "alignment tax and collapse checks against the reference",
        (
            "win_rate",
            "win_rate_lower_bound",
            "alpha",
            "threshold",
            "win_rate_ci90",
            "kl",
            "tax_perplexity_ratio",
        ),
    ),
    StageSpec(
        "promote",
        "train worker",
        "the candidate serves a canary share of the API keys (or everyone, with no share)",
        ("version", "canary_share"),
    ),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
OWN_PROCESS_STAGES = frozenset(s.name for s in STAGES if s.runs_in == "own process")
_BY_NAME = {stage.name: stage for stage in STAGES}

# pending, running: active. succeeded: every stage done. waiting: the snapshot found too few
# comparisons (the trigger starts a run again once more arrive). rejected: a gate said no.
# failed: a stage crashed past its retries or ran past its time limit. cancelled: by an operator.
RunStatus = Literal["pending", "running", "succeeded", "waiting", "rejected", "failed", "cancelled"]
RUN_OUTCOMES: tuple[str, ...] = ("succeeded", "waiting", "rejected", "failed", "cancelled")


def stage_spec(name: str) -> StageSpec:
    return _BY_NAME[name]


@dataclass(frozen=True)
class StageSummary:
    name: str
    status: str
    attempts: int
    seconds: float | None
    reason: str
    outputs: dict[str, Any] = field(default_factory=dict)

    def shown(self) -> dict[str, Any]:
        """The outputs worth a glance (those the stage has)."""
        spec = _BY_NAME.get(self.name)
        keys = spec.shown if spec is not None else ()
        return {k: self.outputs[k] for k in keys if self.outputs.get(k) is not None}


@dataclass(frozen=True)
class RunSummary:
    id: str
    status: str
    trigger: str
    reason: str
    created_at: str | None
    finished_at: str | None
    cancel_requested: bool
    stages: list[StageSummary] = field(default_factory=list)

    @property
    def waiting_for_data(self) -> bool:
        return self.status == "waiting"

    @property
    def active(self) -> bool:
        return self.status in ("pending", "running")

    def stage(self, name: str) -> StageSummary | None:
        return next((s for s in self.stages if s.name == name), None)

    def output(self, stage: str, key: str) -> Any:
        found = self.stage(stage)
        return found.outputs.get(key) if found is not None else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        stages = [StageSummary(**stage) for stage in data.get("stages", [])]
        return cls(**{**data, "stages": stages})
