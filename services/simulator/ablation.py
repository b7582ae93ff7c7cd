"""``--ablation``: the alignment tax of PPO with and without the pretraining mix (ptx).

The trainer trained the final round's policy with PPO-ptx. The ablation trains a second policy
from the same starting policy, against the same reward model, on the same prompts, with the
same PPO settings and seed, only without the ptx term; then judges both the same way: the
held-out personas compare each with v0 on the held-out prompts (answers sampled here, with the
same seeds for all three), and general-text perplexity is measured against v0's. This is the
paper's Figure 33 question in miniature: what does ptx buy in general-text quality, and what
does it cost in preference?

It trains with the RL library in the demo's own process, outside the trainer and the
registry: the ablation's policy is an experiment, never a serving candidate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from services.common.model_loading import load_causal_lm, load_tokenizer
from services.common.registry import ModelRegistry
from services.rlhf.config import from_dict
from services.rlhf.evaluation import perplexity
from services.rlhf.generation import SamplingConfig, generate
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.ppo import PPOConfig, PPOTrainer
from services.simulator.evaluate import Preference, judged_preference
from services.simulator.personas import Persona

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArmResult:
    name: str  # "v0", "PPO", "PPO-ptx"
    version: str  # registry version, or "(ablation)" for the policy trained here
    preference: Preference | None  # judged against v0; None for v0 itself
    perplexity: float


def alignment_tax(
    registry: ModelRegistry,
    ptx_version: str,
    eval_prompts: Sequence[str],
    judges: Sequence[Persona],
    general_texts: Sequence[str],
    out_dir: Path,
    max_tokens: int,
    seed: int = 0,
) -> list[ArmResult]:
    """v0, the trainer's PPO-ptx policy ``ptx_version`` and the same run without ptx."""
    ptx_info = registry.get("policy", ptx_version)
    config = from_dict(PPOConfig, ptx_info.manifest.config["ppo"])
    if config.ptx_coef == 0:
        raise ValueError(f"policy/{ptx_version} was trained without ptx: nothing to ablate")
    start = registry.get("policy", ptx_info.manifest.parent or "v0")
    reference = registry.versions("policy")[0]
    reward = registry.get("reward", ptx_info.manifest.config["reward_model"])

    plain = _train_plain_ppo(
        start.path,
        reference.path,
        reward.path,
        config,
        ptx_info.manifest.config["iterations"],
        training_prompts(Path(ptx_info.manifest.config["dataset"])),
        out_dir / "ppo",
    )

    tokenizer = load_tokenizer(reference.path)
    sampling = SamplingConfig(max_new_tokens=max_tokens, temperature=0.7)
    models = {
        "v0": (reference.version, _fp32(reference.path)),
        "PPO": ("(ablation)", plain),
        "PPO-ptx": (ptx_version, _fp32(ptx_info.path)),
    }
    conversations = [[{"role": "user", "content": p}] for p in eval_prompts]
    answers = {}
    for name, (_version, model) in models.items():
        torch.manual_seed(seed)  # the same sampling noise for every arm
        answers[name] = generate(model, tokenizer, conversations, sampling).texts
    results = []
    for name, (version, model) in models.items():
        preference = None
        if name != "v0":
            preference = judged_preference(
                judges, eval_prompts, answers[name], answers["v0"], seed=seed
            )
        results.append(
            ArmResult(
                name,
                version,
                preference,
                perplexity(model, tokenizer, list(general_texts)),
            )
        )
    return results


def _train_plain_ppo(
    start: Path,
    reference: Path,
    reward: Path,
    config: PPOConfig,
    iterations: int,
    prompts: Sequence[Sequence[dict[str, str]]],
    out_dir: Path,
):
    plain = dataclasses.replace(config, ptx_coef=0.0)
    trainer = PPOTrainer(
        _fp32(start),
        _fp32(reference),
        None,  # the value model starts from the RM, as in the trainer
        ScalarHeadModel.from_pretrained(reward, device="cpu"),
        load_tokenizer(start),
        plain,
        checkpoint_dir=out_dir / "checkpoints",
    )
    log.info("ablation: PPO without ptx, %d iterations on %d prompts", iterations, len(prompts))
    trainer.train(prompts, iterations)
    return trainer.policy


def _fp32(path: Path):
    # Every arm in fp32 on the CPU, as the trainer trains and gates them.
    return load_causal_lm(path, device="cpu", dtype=torch.float32)[0]


def training_prompts(dataset: Path) -> list[list[dict[str, str]]]:
    """The distinct prompts of a run's snapshot (JSON lines of comparison groups) outside its
    held-out split, in file order: the prompts the trainer's PPO sampled from."""
    seen: dict[str, list[dict[str, str]]] = {}
    for group in map(json.loads, filter(str.strip, dataset.read_text().splitlines())):
        if not group["heldout"]:
            seen.setdefault(json.dumps(group["prompt"], sort_keys=True), group["prompt"])
    return list(seen.values())


def table(results: Sequence[ArmResult]) -> str:
    """The alignment-tax table (Markdown)."""
    v0 = next(r for r in results if r.name == "v0")
    lines = [
        "| policy | version | win rate vs v0 (95% CI) | general-text perplexity | vs v0 |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        win = "-"
        if r.preference is not None:
            p = r.preference
            win = f"{p.rate:.0%} [{p.low:.0%}, {p.high:.0%}]"
        change = r.perplexity / v0.perplexity - 1
        lines.append(f"| {r.name} | {r.version} | {win} | {r.perplexity:.2f} | {change:+.1%} |")
    return "\n".join(lines)
