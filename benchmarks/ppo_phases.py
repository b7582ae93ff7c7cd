"""Where one of our PPO iterations spends its time: the phase breakdown behind the PPO ceiling
in docs/benchmarks.md.

Run:
    .venv/bin/python -m benchmarks.ppo_phases --store data/models [--iterations 2]

The same iteration as ``benchmarks.ppo_throughput`` (16 episodes, minibatch 8, 32 new tokens,
fp32 on CPU), one warm-up iteration, then each phase timed by wrapping the functions the
trainer calls: the rollout's decoding, the log-prob passes (the reference's without gradient,
the policy's with), the value passes, the reward model's scoring and every ``backward``. What
is left is the optimizer steps, clipping and the advantage arithmetic. TRL's trainer runs the
same forward and backward passes with the same kernels, plus one more policy forward (ours reads
the old log-probs off the rollout), so these figures bound how far ahead of it ours can get.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import services.rlhf.ppo as ppo
from benchmarks.ppo_throughput import make_prompts, matched_config
from services.common.base_model import init_policy_v0
from services.common.registry import ModelRegistry
from services.rlhf.heads import ScalarHeadModel


def _timed(seconds: Counter, name: Callable[[], str], fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name()] += time.perf_counter() - started

    return wrapper


def _with_grad_mode(phase: str) -> Callable[[], str]:
    return lambda: f"{phase} ({'with' if torch.is_grad_enabled() else 'no'} gradient)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("data/models"))
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()

    seconds: Counter = Counter()
    # The trainer looks these up in its module at call time, so wrapping them there times them.
    ppo.generate = _timed(seconds, lambda: "rollout decoding", ppo.generate)
    ppo.response_logprobs = _timed(seconds, _with_grad_mode("log-prob pass"), ppo.response_logprobs)
    ppo._values = _timed(seconds, _with_grad_mode("value pass"), ppo._values)
    ppo.PPOTrainer._scores = _timed(seconds, lambda: "reward scoring", ppo.PPOTrainer._scores)
    torch.Tensor.backward = _timed(seconds, lambda: "backward", torch.Tensor.backward)

    info, _ = init_policy_v0(ModelRegistry(args.store))
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    policy = AutoModelForCausalLM.from_pretrained(info.path, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(info.path, dtype=torch.float32)
    reward_model = ScalarHeadModel.from_pretrained(info.path)
    prompts = make_prompts(16)
    trainer = ppo.PPOTrainer(
        policy, reference, None, reward_model, tokenizer, matched_config(16, 8, 32, 3e-6)
    )
    trainer.step(prompts, seed=0)  # warm-up, not counted
    seconds.clear()
    started = time.perf_counter()
    for iteration in range(1, args.iterations + 1):
        trainer.step(prompts, seed=iteration)
    total = (time.perf_counter() - started) / args.iterations

    print("| phase | seconds per iteration | share |")
    print("|---|---|---|")
    for name, value in seconds.most_common():
        print(f"| {name} | {value / args.iterations:.2f} | {value / args.iterations / total:.0%} |")
    rest = total - sum(seconds.values()) / args.iterations
    print(f"| the rest (optimizer steps, clipping, advantages) | {rest:.2f} | {rest / total:.0%} |")
    print(f"| iteration | {total:.2f} | |")


if __name__ == "__main__":
    main()
