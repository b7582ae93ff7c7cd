"""The reward-model stages: train on the snapshot (warm start), then gate and promote.

Training starts from the promoted reward model (its head included) or, the first time, from
the promoted policy's backbone with a fresh head; it sees the snapshot's training groups
only. The model is centred on the answers the policy served in those groups, evaluated on the
held-out groups, and registered as a candidate that names its snapshot. The gate compares its
held-out accuracy with the promoted RM's on the very same held-out groups; the worker
promotes a passing RM at once, so the reward service serves it while PPO trains against it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from services.common.model_loading import load_tokenizer, pick_device
from services.rlhf.config import to_dict
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.reward_model import (
    Comparison,
    RewardConfig,
    centre_on_references,
    pairwise_accuracy,
    train_reward_model,
)
from services.trainer import snapshot
from services.trainer.gates import reward_model_gate
from services.trainer.stages.context import StageContext, StageResult

log = logging.getLogger(__name__)


def comparisons(dataset: Path, heldout: bool) -> list[Comparison]:
    return [
        Comparison(g.prompt, g.answers, g.pairs)
        for g in snapshot.read(dataset)
        if g.heldout == heldout and g.pairs
    ]


def train(ctx: StageContext) -> StageResult:
    settings, registry = ctx.settings, ctx.registry
    dataset = Path(ctx.inputs["snapshot"]["dataset"])
    existing = ctx.version_made_by_this_run("reward")
    if existing is not None:  # registered by an earlier attempt that died right after
        return StageResult("done", {"version": existing.version, **existing.manifest.metrics})
    device = pick_device(settings.device)
    promoted_rm = registry.promoted("reward")
    start = promoted_rm or registry.promoted("policy")
    if start is None:
        raise RuntimeError("no promoted policy to start the reward model from")
    torch.manual_seed(0)  # the fresh head of a first RM
    model = ScalarHeadModel.from_pretrained(start.path, device=str(device))
    tokenizer = load_tokenizer(start.path)
    train_set, heldout = comparisons(dataset, False), comparisons(dataset, True)
    if not train_set:
        return StageResult("rejected", reason="the snapshot holds no training comparisons")
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
    accuracy = pairwise_accuracy(model, tokenizer, heldout, settings.rm_max_length)
    metrics = {
        "heldout_accuracy": accuracy,
        "steps": float(result.steps),
        "final_loss": result.losses[-1] if result.losses else float("nan"),
        "centring_shift": shift,
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    info = registry.create_version(
        "reward",
        write,
        parent=promoted_rm.version if promoted_rm else None,
        data_snapshot_id=ctx.inputs["snapshot"]["snapshot_id"],
        metrics=metrics,
        config={**ctx.provenance(), "rm": to_dict(config)},
        notes=f"trained by {ctx.run_id} on {len(train_set)} comparison groups",
    )
    log.info("registered reward/%s: held-out accuracy %.3f", info.version, accuracy)
    return StageResult("done", {"version": info.version, **metrics})


def gate(ctx: StageContext) -> StageResult:
    settings, registry = ctx.settings, ctx.registry
    candidate = ctx.inputs["reward_model"]["version"]
    accuracy = ctx.inputs["reward_model"]["heldout_accuracy"]
    promoted = registry.promoted("reward")
    if promoted is not None and promoted.version == candidate:
        # An earlier attempt passed and the worker promoted it, then died before recording.
        return StageResult("done", {"heldout_accuracy": accuracy, "promoted": candidate})
    promoted_accuracy = None
    if promoted is not None:
        heldout = comparisons(Path(ctx.inputs["snapshot"]["dataset"]), True)
        device = pick_device(settings.device)
        model = ScalarHeadModel.from_pretrained(promoted.path, device=str(device))
        promoted_accuracy = pairwise_accuracy(
            model, load_tokenizer(promoted.path), heldout, settings.rm_max_length
        )
    verdict = reward_model_gate(
        accuracy,
        promoted_accuracy,
        tolerance=settings.rm_gate_tolerance,
        first_margin=settings.rm_first_margin,
    )
    outputs = {"heldout_accuracy": accuracy, "promoted_accuracy": promoted_accuracy}
    if not verdict.passed:
        if registry.get("reward", candidate).status == "candidate":
            registry.reject("reward", candidate, verdict.reason)
        return StageResult("rejected", outputs, verdict.reason)
    # The worker promotes it (pipeline.py), so the reward service serves it during PPO.
    return StageResult("done", {**outputs, "promoted": candidate})
