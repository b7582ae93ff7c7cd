"""Reward-model training throughput: our K-wise trainer vs TRL's RewardTrainer, side by side.

Run (needs the bench extra: pip install -c constraints.txt -e '.[bench]'):
    .venv/bin/python -m benchmarks.reward_throughput [--prompts 48] [--heldout 24] [--rounds 3]

With ``--rounds R`` the two sides run R times each, alternating which goes first
(benchmarks/rounds.py), and the summary gives medians with their range.

Same backbone (policy/v0, SmolLM2-135M-Instruct, fp32, CPU), same K=4 ranking data,
same sequence budget, same learning rate, schedule and optimizer betas, one epoch.
TRL gets each ranking as its C(4,2)=6 (chosen, rejected) pairs, the only form it
takes, so it runs every answer through the model K-1=3 times; ours runs each
answer once and scores all 6 pairs from those 4 rewards. Both are fed 32
sequences per optimizer step. Throughput counts comparisons (pairs) per second
of training; accuracy is on the same held-out pairs.

The data is synthetic with a learnable preference (more occurrences of "great"
is better) so that accuracy means something after one short epoch.
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.rounds import interleave, report, spread
from services.common.base_model import init_policy_v0
from services.common.registry import ModelRegistry
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.reward_model import (
    Comparison,
    RewardConfig,
    pairwise_accuracy,
    train_reward_model,
)
from services.rlhf.tokenization import encode_prompt_answer, pad

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "music",
    "table",
    "light",
    "ocean",
    "paper",
    "window",
    "garden",
]


def rankings(n: int, seed: int) -> list[Comparison]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Describe item {i} in a few words."}]
        answers, ranks = [], []
        for great in rng.sample(range(4), 4):
            words = [rng.choice(WORDS) for _ in range(12)] + ["great"] * (2 * great)
            rng.shuffle(words)
            answers.append(" ".join(words))
            ranks.append(3 - great)
        out.append(Comparison.from_ranks(prompt, answers, ranks))
    return out


def as_trl_pairs(comparisons: list[Comparison]):
    from datasets import Dataset

    rows = {"prompt": [], "chosen": [], "rejected": []}
    for c in comparisons:
        for better, worse in c.pairs:
            rows["prompt"].append(list(c.prompt))
            rows["chosen"].append([{"role": "assistant", "content": c.answers[better]}])
            rows["rejected"].append([{"role": "assistant", "content": c.answers[worse]}])
    return Dataset.from_dict(rows)


def run_ours(model_dir: Path, tokenizer, train, heldout, args) -> tuple[float, float]:
    model = ScalarHeadModel.from_pretrained(model_dir)
    config = RewardConfig(
        lr=args.lr,
        epochs=1,
        prompts_per_batch=getattr(args, "prompts_per_batch", 8),
        max_length=args.max_length,
        warmup_ratio=0.1,
        bf16=args.precision == "bf16",
    )
    started = time.perf_counter()
    result = train_reward_model(model, tokenizer, train, config, progress=True)
    seconds = time.perf_counter() - started
    pairs = sum(len(c.pairs) for c in train)
    accuracy = pairwise_accuracy(model, tokenizer, heldout, args.max_length)
    print(f"ours: {result.steps} steps, {pairs} comparisons in {seconds:.1f}s")
    return pairs / seconds, accuracy


@torch.no_grad()
def trl_accuracy(model, tokenizer, heldout, max_length: int) -> float:
    model.eval()
    correct = total = 0
    for c in heldout:
        encoded = [
            encode_prompt_answer(tokenizer, c.prompt, a, max_length).input_ids for a in c.answers
        ]
        ids, mask = pad(encoded, tokenizer.pad_token_id)
        scores = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        for better, worse in c.pairs:
            correct += int(scores[better] > scores[worse])
            total += 1
    return correct / total


def run_trl(model_dir: Path, tokenizer, train, heldout, args) -> tuple[float, float]:
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = as_trl_pairs(train)
    with tempfile.TemporaryDirectory() as out:
        config = TRLRewardConfig(
            output_dir=out,
            per_device_train_batch_size=16,  # 16 pairs = 32 sequences, as ours
            num_train_epochs=1,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, round(0.1 * len(dataset) / 16)),  # 10%, as ours
            adam_beta2=0.95,
            max_grad_norm=1.0,
            max_length=args.max_length,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1000,
            disable_dropout=True,
            # TRL defaults to bf16 autocast and gradient checkpointing; match our run instead.
            bf16=args.precision == "bf16",
            gradient_checkpointing=False,
            center_rewards_coefficient=None,
            seed=0,
        )
        trainer = RewardTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    print(f"TRL: {len(dataset)} comparisons in {seconds:.1f}s")
    return len(dataset) / seconds, trl_accuracy(model, tokenizer, heldout, args.max_length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48, help="training prompts (K=4 each)")
    parser.add_argument("--heldout", type=int, default=24, help="held-out prompts")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="both sides: autocast or not"
    )
    parser.add_argument("--store", type=Path, help="a model store with policy/v0 (else a temp one)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds (medians and spread when > 1)"
    )
    args = parser.parse_args()

    from transformers import AutoTokenizer

    accuracies = {"ours": [], "TRL": []}

    def side(run, name):
        def measure() -> float:
            torch.manual_seed(0)
            rate, accuracy = run(info.path, tokenizer, train, heldout, args)
            accuracies[name].append(accuracy)
            gc.collect()
            return rate

        return measure

    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(args.store or Path(tmp))
        info, _ = init_policy_v0(registry)
        tokenizer = AutoTokenizer.from_pretrained(info.path)
        train, heldout = rankings(args.prompts, seed=1), rankings(args.heldout, seed=2)
        result = interleave(args.rounds, side(run_ours, "ours"), side(run_trl, "TRL"))

    print(f"precision: {args.precision} (both sides); comparisons/s of one epoch")
    print(
        f"held-out accuracy: ours {spread(accuracies['ours'], 3)}, "
        f"TRL {spread(accuracies['TRL'], 3)}"
    )
    report(result, "comparisons/s", "TRL", target=2.5)


if __name__ == "__main__":
    main()
