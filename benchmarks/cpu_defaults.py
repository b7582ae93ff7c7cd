"""How the CPU defaults of the RL configs were chosen: small sweeps on the real base model.

Run: .venv/bin/python -m benchmarks.cpu_defaults [--store data/models]

1. PPO minibatch size (also the chunk size of generation and of the rollout scoring
   passes) at 16 episodes per iteration, 32 new tokens: episodes per second.
2. Reward-model learning rate: held-out pairwise accuracy after one epoch on the
   synthetic K=4 rankings of benchmarks/reward_throughput.py (48 prompts), and
   throughput at 4, 8 and 16 prompts per step.

Only our trainers run here (the peers are in ppo_throughput and reward_throughput).
The synthetic task is easy, so the learning-rate sweep shows which rates learn at
all in one short epoch on this model, not the best rate for real feedback.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer

from benchmarks import ppo_throughput, reward_throughput
from services.common.base_model import init_policy_v0
from services.common.registry import ModelRegistry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="a model store with policy/v0 (else a temp one)")
    args = parser.parse_args()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        info, _ = init_policy_v0(ModelRegistry(args.store or Path(tmp)))
        tokenizer = AutoTokenizer.from_pretrained(info.path)

        prompts = ppo_throughput.make_prompts(16)
        for minibatch in (4, 8, 16):
            ppo_args = argparse.Namespace(
                lr=3e-6, minibatch_size=minibatch, response_length=32, iterations=2
            )
            torch.manual_seed(0)
            rate, length = ppo_throughput.run_ours(info.path, tokenizer, prompts, ppo_args)
            rows.append(f"ppo minibatch {minibatch:>2}: {rate:.2f} episodes/s ({length:.0f} tok)")
            print(rows[-1], flush=True)

        train = reward_throughput.rankings(48, seed=1)
        heldout = reward_throughput.rankings(16, seed=2)
        for lr, per_step in ((1e-5, 8), (3e-5, 8), (1e-4, 8), (3e-5, 4), (3e-5, 16)):
            rm_args = argparse.Namespace(
                lr=lr, max_length=128, precision="fp32", prompts_per_batch=per_step
            )
            torch.manual_seed(0)
            rate, accuracy = reward_throughput.run_ours(
                info.path, tokenizer, train, heldout, rm_args
            )
            rows.append(
                f"rm lr {lr:.0e}, {per_step:>2} prompts/step: "
                f"{rate:.2f} comparisons/s, held-out accuracy {accuracy:.3f}"
            )
            print(rows[-1], flush=True)
    print("\n".join(["", "summary:", *rows]))


if __name__ == "__main__":
    main()
