"""The reward-model stages: train on the snapshot (warm start), then gate and promote.

Two reward models are trained on disjoint halves of the snapshot's training groups, split by
prompt (cross-fitting, ``snapshot.fold``): the reward model PPO optimises against (role
"reward", served by the reward service) and the judge the policy gate asks (role "judge").
The quirks of one that PPO learns to exploit are not the other's, which never saw those
comparisons, so reward hacking does not count as winning.

Each starts from its own role's promoted model (its head included) or, the first time, from
the promoted policy's backbone with a fresh head, and sees its half of the training groups
only. Each is centred on the answers the policy served in its groups, evaluated on all
held-out groups, and registered as a candidate that names its snapshot. The gate compares
the reward model's held-out accuracy with the promoted RM's on the very same held-out
groups; the worker promotes a passing RM at once, so the reward service serves it while PPO
trains against it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import torch

from services.common.model_loading import load_tokenizer, pick_device
from services.common.registry import VersionInfo
from services.rlhf.config import to_dict
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.reward_model import (
    Comparison,
    RewardConfig,
    accuracy_by_group,
    centre_on_references,
    pairwise_accuracy,
    pooled_accuracy,
    train_reward_model,
)
from services.trainer import snapshot
from services.trainer.estimates import mean_estimate
from services.trainer.gates import reward_model_gate
from services.trainer.stages.context import StageContext, StageResult

log = logging.getLogger(__name__)


def comparisons(
    dataset: Path,
    heldout: bool,
    fold: snapshot.RewardFold | None = None,
    recorded_from: datetime | None = None,
) -> list[Comparison]:
    """The snapshot's held-out (or training) groups with pairs; of one ``fold`` only, and
    only those recorded at or after ``recorded_from``, if given."""
    return [
        Comparison(g.prompt, g.answers, g.pairs)
        for g in snapshot.read(dataset)
        if g.heldout == heldout
        and g.pairs
        and (fold is None or snapshot.fold(g.prompt) == fold)
        and (recorded_from is None or _recorded(g) >= recorded_from)
    ]


def _recorded(group: snapshot.Group) -> datetime:
    return (
        datetime.fromisoformat(group.recorded_at)
        if group.recorded_at
        else datetime.min.replace(tzinfo=UTC)
    )


def trained_until(info: VersionInfo | None) -> datetime | None:
    """The data cursor of a reward model's lineage: every group recorded before it has trained
    this model or one it was warm-started from. A snapshot starts at the last *succeeded* run,
    so after a rejected run it holds groups the promoted RM already learned; the cursor keeps
    each comparison to one pass per lineage (the paper's one epoch), not one more per run."""
    if info is None or "trained_until" not in info.manifest.config:
        return None
    return datetime.fromisoformat(info.manifest.config["trained_until"])


def train(ctx: StageContext) -> StageResult:
    """The reward model PPO optimises against."""
    return _train(ctx, "reward")


def train_judge(ctx: StageContext) -> StageResult:
    """The policy gate's judge, on the other half of the training groups."""
    return _train(ctx, "judge")


def _train(ctx: StageContext, role: snapshot.RewardFold) -> StageResult:
    settings, registry = ctx.settings, ctx.registry
    dataset = Path(ctx.inputs["snapshot"]["dataset"])
    existing = ctx.version_made_by_this_run(role)
    if existing is not None:  # registered by an earlier attempt that died right after
        return StageResult("done", {"version": existing.version, **existing.manifest.metrics})
    device = pick_device(settings.device)
    promoted_rm = registry.promoted(role)
    start = promoted_rm or registry.promoted("policy")
    if start is None:
        raise RuntimeError(f"no promoted policy to start the {role} model from")
    torch.manual_seed(0)  # the fresh head of a first RM
    model = ScalarHeadModel.from_pretrained(start.path, device=str(device))
    tokenizer = load_tokenizer(start.path)
    heldout = comparisons(dataset, True)
    train_set = comparisons(dataset, False, role, recorded_from=trained_until(promoted_rm))
    if not train_set and promoted_rm is not None:
        # Nothing new for this half since the promoted model learned it: keep that model.
        accuracy = pairwise_accuracy(model, tokenizer, heldout, settings.rm_max_length)
        log.info("no new %s comparisons: %s/%s stays", role, role, promoted_rm.version)
        return StageResult(
            "done",
            {"version": promoted_rm.version, "heldout_accuracy": accuracy, "groups": 0.0},
        )
    if not train_set:
        return StageResult(
            "rejected", reason=f"the snapshot holds no training comparisons for the {role} model"
        )
    config = RewardConfig(
        lr=settings.rm_lr,
        epochs=settings.rm_epochs,
        prompts_per_batch=settings.rm_prompts_per_batch,
        max_length=settings.rm_max_length,
        train_top_layers=settings.rm_train_top_layers,
        bf16=device.type == "cuda",
    )
    result = train_reward_model(
        model, tokenizer, train_set, config, checkpoint_dir=ctx.checkpoint_dir
    )
    references = [(c.prompt, answer) for c in train_set for answer in c.answers]
    shift = centre_on_references(model, tokenizer, references, settings.rm_max_length)
    by_group = accuracy_by_group(model, tokenizer, heldout, settings.rm_max_length)
    accuracy = pooled_accuracy(by_group, heldout)
    metrics = {
        "heldout_accuracy": accuracy,
        "steps": float(result.steps),
        "final_loss": result.losses[-1] if result.losses else float("nan"),
        "centring_shift": shift,
        "groups": float(len(train_set)),
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    info = registry.create_version(
        role,
        write,
        parent=promoted_rm.version if promoted_rm else None,
        data_snapshot_id=ctx.inputs["snapshot"]["snapshot_id"],
        metrics=metrics,
        config={
            **ctx.provenance(),
            "rm": to_dict(config),
            "trained_until": ctx.inputs["snapshot"]["until"],
        },
        notes=f"trained by {ctx.run_id} on {len(train_set)} comparison groups (the {role} half)",
    )
    log.info("registered %s/%s: held-out accuracy %.3f", role, info.version, accuracy)
    # The per-group accuracies go to the gate (which resamples them), not into the manifest.
    return StageResult(
        "done", {"version": info.version, **metrics, "heldout_group_accuracy": by_group}
    )


def gate(ctx: StageContext) -> StageResult:
    settings, registry = ctx.settings, ctx.registry
    trained = ctx.inputs["reward_model"]
    candidate, accuracy = trained["version"], trained["heldout_accuracy"]
    promoted = registry.promoted("reward")
    if promoted is not None and promoted.version == candidate:
        # Kept (nothing new to learn), or an earlier attempt passed and the worker promoted
        # it, then died before recording.
        return StageResult("done", {"heldout_accuracy": accuracy, "promoted": candidate})
    heldout = comparisons(Path(ctx.inputs["snapshot"]["dataset"]), True)
    device = pick_device(settings.device)
    ours = trained.get("heldout_group_accuracy")
    if ours is None:  # a retried training stage that found its version registered
        info = registry.get("reward", candidate)
        ours = accuracy_by_group(
            ScalarHeadModel.from_pretrained(info.path, device=str(device)),
            load_tokenizer(info.path),
            heldout,
            settings.rm_max_length,
        )
    alpha, resamples = settings.gate_alpha, settings.bootstrap_samples
    estimate = mean_estimate(ours, resamples, alpha)
    outputs: dict = {
        "heldout_accuracy": accuracy,
        "accuracy_by_group": estimate.value,
        "accuracy_lower_bound": estimate.lower,
        "alpha": alpha,
        "promoted_accuracy": None,
    }
    gain = None
    if promoted is not None:
        model = ScalarHeadModel.from_pretrained(promoted.path, device=str(device))
        tokenizer = load_tokenizer(promoted.path)
        theirs = accuracy_by_group(model, tokenizer, heldout, settings.rm_max_length)
        gains = [a - b for a, b in zip(ours, theirs, strict=True)]
        gain = mean_estimate(gains, resamples, alpha)
        outputs.update(
            promoted_accuracy=pooled_accuracy(theirs, heldout),
            gain=gain.value,
            gain_lower_bound=gain.lower,
        )
    verdict = reward_model_gate(
        estimate,
        gain,
        tolerance=settings.rm_gate_tolerance,
        first_margin=settings.rm_first_margin,
    )
    # What the verdict compared, for the run record, the dashboard and the status views.
    if gain is None:
        outputs.update(decided_on="accuracy_lower_bound", threshold=0.5 + settings.rm_first_margin)
    else:
        outputs.update(decided_on="gain_lower_bound", threshold=-settings.rm_gate_tolerance)
    if not verdict.passed:
        return StageResult("rejected", outputs, verdict.reason)  # the pipeline rejects it
    # The pipeline promotes it, so the reward service serves it during PPO.
    return StageResult("done", {**outputs, "promoted": candidate})
