"""The policy stages: PPO(-ptx) against the newly promoted RM, then the policy gate.

PPO starts from the promoted policy, with the value model copied from the new RM and the KL
term against a fixed reference (v0 unless configured); the ptx texts shipped in
services/trainer/data keep it fluent on general text. The gate generates answers from the
candidate and the promoted policy on held-out prompts and decides on the lower confidence
bound of the win rate under the judge (a reward model trained on the other half of the
comparisons, not the one PPO optimised), and, against the reference, on the KL, the alignment
tax on text no stage trains on, and signs of collapse.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from services.common.model_loading import load_tokenizer, pick_device
from services.common.registry import ModelRegistry, VersionInfo
from services.rlhf.config import to_dict
from services.rlhf.evaluation import kl_to_reference, perplexity, win_rate_with_interval
from services.rlhf.generation import SamplingConfig, generate
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.metric_names import standard_metrics
from services.rlhf.ppo import PPOConfig, PPOTrainer
from services.rlhf.reward_reading import read_rewards
from services.trainer import snapshot
from services.trainer.estimates import mean_estimate
from services.trainer.gates import AnswerStats, PolicyLimits, policy_gate
from services.trainer.settings import TrainerSettings
from services.trainer.stages.context import StageContext, StageResult

log = logging.getLogger(__name__)

PTX_FILE = Path(__file__).resolve().parents[1] / "data" / "ptx.txt"
TAX_FILE = Path(__file__).resolve().parents[1] / "data" / "tax.txt"


def _paragraphs(path: Path) -> list[str]:
    return [p.strip() for p in path.read_text().split("\n\n") if p.strip()]


def ptx_texts() -> list[str]:
    """The shipped pretraining-style texts PPO-ptx trains on (paragraphs)."""
    return _paragraphs(PTX_FILE)


def tax_texts() -> list[str]:
    """General texts no stage trains on (shipped apart from the ptx texts): the alignment
    tax is the candidate's perplexity on these over the reference policy's."""
    return _paragraphs(TAX_FILE)


def prompts(dataset: Path, heldout: bool) -> list[list[dict[str, str]]]:
    """The distinct prompts of the snapshot's training (or held-out) groups, in file order."""
    seen: dict[str, list[dict[str, str]]] = {}
    for group in snapshot.read(dataset):
        if group.heldout == heldout:
            seen.setdefault(snapshot.prompt_key(group.prompt), group.prompt)
    return list(seen.values())


def policy_limits(settings: TrainerSettings) -> PolicyLimits:
    """The policy gate's limits, as configured."""
    return PolicyLimits(
        min_win_rate=settings.min_win_rate,
        max_kl=settings.max_kl,
        max_tax_perplexity_ratio=settings.max_tax_perplexity_ratio,
        min_end_of_turn_ratio=settings.min_end_of_turn_ratio,
        min_length_ratio=settings.min_length_ratio,
        min_distinct_ratio=settings.min_distinct_ratio,
    )


def reference_version(registry: ModelRegistry, configured: str) -> VersionInfo:
    if configured:
        return registry.get("policy", configured)
    versions = registry.versions("policy")
    if not versions:
        raise RuntimeError("the registry holds no policy")
    return versions[0]  # the first policy: the base (v0)


def _causal_lm(path: Path, device: torch.device):
    # Training and the gate compare small differences: fp32 weights and fp32 compute, on any
    # device (PPO has no bf16 path yet; the reward stage autocasts to bf16 on GPU).
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()


def train(ctx: StageContext) -> StageResult:
    settings, registry = ctx.settings, ctx.registry
    existing = ctx.version_made_by_this_run("policy")
    if existing is not None:
        return StageResult("done", {"version": existing.version, **existing.manifest.metrics})
    device = pick_device(settings.device)
    start = registry.promoted("policy")
    if start is None:
        raise RuntimeError("no promoted policy to train")
    reference = reference_version(registry, settings.reference_version)
    rm_info = registry.get("reward", ctx.inputs["reward_model"]["version"])
    tokenizer = load_tokenizer(start.path)
    train_prompts = prompts(Path(ctx.inputs["snapshot"]["dataset"]), heldout=False)
    config = PPOConfig(
        policy_lr=settings.ppo_policy_lr,
        rollout_batch_size=settings.ppo_rollout_batch_size,
        minibatch_size=settings.ppo_minibatch_size,
        ppo_epochs=settings.ppo_epochs,
        kl_beta=settings.ppo_kl_beta,
        ptx_coef=settings.ptx_coef,
        ptx_per_episode=settings.ptx_per_episode,
        sampling=SamplingConfig(max_new_tokens=settings.ppo_max_new_tokens),
        # Otherwise PPOConfig's fixed score for a cut answer.
        **({"truncated_answer_score": None} if settings.ppo_score_cut_answers else {}),
        reward_max_length=settings.rm_max_length,
        checkpoint_every=settings.ppo_checkpoint_every,
    )
    reward_model = ScalarHeadModel.from_pretrained(rm_info.path, device=str(device))
    trainer = PPOTrainer(
        _causal_lm(start.path, device),
        _causal_lm(reference.path, device),
        None,  # the value model starts as a copy of the reward model (the paper)
        reward_model,
        tokenizer,
        config,
        ptx_texts=ptx_texts() if settings.ptx_coef > 0 else None,
        checkpoint_dir=ctx.checkpoint_dir,
    )

    def log_iteration(iteration: int, stats: dict[str, float]) -> None:
        named = standard_metrics(stats)
        log.info(
            "ppo iteration %d: %s",
            iteration + 1,
            " ".join(f"{k}={v:.4g}" for k, v in named.items()),
            extra={"iteration": iteration + 1, **named},
        )

    history = trainer.train(train_prompts, settings.ppo_iterations, on_iteration=log_iteration)
    last = standard_metrics(history[-1]) if history else {}
    info = registry.create_version(
        "policy",
        lambda folder: _save(trainer.policy, tokenizer, folder),
        parent=start.version,
        data_snapshot_id=ctx.inputs["snapshot"]["snapshot_id"],
        metrics=last,
        config={
            **ctx.provenance(),
            "reward_model": rm_info.version,
            "ppo": to_dict(config),
            "iterations": settings.ppo_iterations,
            "dataset": ctx.inputs["snapshot"]["dataset"],
        },
        notes=f"PPO{'-ptx' if settings.ptx_coef > 0 else ''} by {ctx.run_id} against "
        f"reward/{rm_info.version}",
    )
    log.info("registered policy/%s", info.version)
    # Per iteration, for the demo's plots (a resumed attempt lists the iterations it ran).
    iterations = [standard_metrics(stats) for stats in history]
    return StageResult("done", {"version": info.version, **last, "history": iterations})


def _save(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def gate(ctx: StageContext) -> StageResult:
    settings, registry = ctx.settings, ctx.registry
    device = pick_device(settings.device)
    candidate_info = registry.get("policy", ctx.inputs["ppo"]["version"])
    promoted_info = registry.promoted("policy")
    reference_info = reference_version(registry, settings.reference_version)
    # The judge, not the reward model PPO optimised against: trained on the other half of the
    # comparisons (stages/reward.py), so reward hacking does not count as winning.
    rm_info = registry.get("reward", ctx.inputs["reward_model"]["version"])
    judge_info = registry.get("judge", ctx.inputs["judge_model"]["version"])
    if judge_info.path.resolve() == rm_info.path.resolve():
        raise RuntimeError("the policy gate's judge is the reward model PPO optimised against")
    tokenizer = load_tokenizer(candidate_info.path)
    held_prompts = prompts(Path(ctx.inputs["snapshot"]["dataset"]), heldout=True)
    held_prompts = held_prompts[: settings.gate_prompts]
    if not held_prompts:
        return StageResult("rejected", reason="no held-out prompts to judge the policy on")

    candidate = _causal_lm(candidate_info.path, device)
    promoted = _causal_lm(promoted_info.path, device)
    sampling = SamplingConfig(max_new_tokens=settings.gate_max_new_tokens)
    # Several answers per prompt when held-out prompts are few: one sample each would make
    # the verdict a coin toss on sampling noise.
    samples = settings.gate_samples_per_prompt
    asked = [prompt for prompt in held_prompts for _ in range(samples)]
    torch.manual_seed(0)
    ours = generate(candidate, tokenizer, asked, sampling, with_logprobs=False)
    torch.manual_seed(0)
    theirs = generate(promoted, tokenizer, asked, sampling, with_logprobs=False)

    judge = ScalarHeadModel.from_pretrained(judge_info.path, device=str(device))
    scored = functools.partial(read_rewards, judge, tokenizer, max_length=settings.rm_max_length)
    ours_scores = scored(list(zip(asked, ours.texts, strict=True)))
    their_scores = scored(list(zip(asked, theirs.texts, strict=True)))
    verdicts = [
        1.0 if a > b else 0.0 if a < b else 0.5
        for a, b in zip(ours_scores, their_scores, strict=True)
    ]
    # One verdict per prompt (the mean of its samples): the interval resamples prompts.
    per_prompt = [
        sum(verdicts[i : i + samples]) / samples for i in range(0, len(verdicts), samples)
    ]
    win_rate, low, high = win_rate_with_interval(per_prompt, settings.bootstrap_samples)
    alpha = settings.gate_alpha
    win = mean_estimate(per_prompt, settings.bootstrap_samples, alpha)
    del judge, promoted  # two models fewer in memory before the reference loads

    # Against the fixed reference, so no allowance compounds over promotions: the tax on text
    # no stage trains on, KL, and the collapse checks on the reference's own answers.
    reference = _causal_lm(reference_info.path, device)
    texts = tax_texts()
    tax_ratio = perplexity(candidate, tokenizer, texts) / perplexity(reference, tokenizer, texts)
    kl = kl_to_reference(
        candidate, reference, ours.prompt_ids, ours.answer_ids, tokenizer.pad_token_id
    )
    torch.manual_seed(0)
    referenced = generate(reference, tokenizer, asked, sampling, with_logprobs=False)
    eos = tokenizer.eos_token_id
    candidate_stats = AnswerStats.of(ours.answer_ids, ours.texts, eos)
    reference_stats = AnswerStats.of(referenced.answer_ids, referenced.texts, eos)
    verdict = policy_gate(
        win, kl, tax_ratio, candidate_stats, reference_stats, policy_limits(settings)
    )
    outputs = {
        "win_rate": win_rate,
        "win_rate_lower_bound": win.lower,
        "alpha": alpha,
        "threshold": settings.min_win_rate,
        "win_rate_ci90": [low, high],
        "kl": kl,
        "tax_perplexity_ratio": tax_ratio,
        "prompts": len(held_prompts),
        "samples_per_prompt": samples,
        "candidate": vars(candidate_stats),
        "reference": vars(reference_stats),
        "reference_version": reference_info.version,
        "judge": f"judge/{judge_info.version}",
        "reward_model": f"reward/{rm_info.version}",
    }
    log.info("policy gate: %s", json.dumps(outputs))
    if not verdict.passed:
        return StageResult("rejected", outputs, verdict.reason)  # the pipeline rejects it
    return StageResult("done", outputs)
