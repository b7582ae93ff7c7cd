"""Reward service throughput: 32 concurrent gRPC callers (dynamic batching) vs scoring one
answer at a time in the same process.

Run: .venv/bin/python -m benchmarks.reward_serving [--store data/models] [--seconds 20]
        [--callers 32]

The RM is SmolLM2-135M-Instruct with a fresh scalar head (what the trainer starts from), fp32 on
the CPU, registered as reward/v0 in a temporary registry built from the store's policy/v0
(`flywheel models init` makes it; this script runs it into a temporary folder if --store has
none). Both sides score the same (prompt, answer) pairs: 64 chat prompts with answers of
10-60 words. Baseline: a loop calling the RM library (`score_answers`) on one answer at a time.
Ours: the reward service on loopback (`RewardServer`), C threads each calling Score with one
answer in a closed loop. Prints answers/s for each and the ratio (target: at least 3x).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

import grpc
import torch
from transformers import AutoTokenizer

from services.common.base_model import init_policy_v0
from services.common.generated.flywheel.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from services.common.registry import ModelRegistry
from services.reward.server import RewardServer
from services.reward.settings import RewardSettings
from services.rlhf.heads import ScalarHeadModel
from services.rlhf.reward_model import score_answers

WORDS = [
    "the",
    "a",
    "model",
    "answer",
    "colour",
    "blue",
    "red",
    "green",
    "quickly",
    "because",
    "reward",
    "users",
    "like",
    "short",
    "clear",
]


def workload(n: int, seed: int = 0) -> list[tuple[list[dict], str]]:
    rng = random.Random(seed)
    return [
        (
            [
                {
                    "role": "user",
                    "content": f"Question {i}: tell me something about {rng.choice(WORDS)}.",
                }
            ],
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60))),
        )
        for i in range(n)
    ]


def reward_registry(store: Path, folder: Path) -> ModelRegistry:
    policy_registry = ModelRegistry(store)
    if policy_registry.promoted("policy") is None:
        print(f"no policy in {store}: running `flywheel models init` there (~25 s)")
        init_policy_v0(policy_registry)
    policy = policy_registry.promoted("policy")
    torch.manual_seed(0)
    rm = ScalarHeadModel.from_pretrained(policy.path)
    tokenizer = AutoTokenizer.from_pretrained(policy.path)
    registry = ModelRegistry(folder)

    def write(target):
        rm.save_pretrained(target)
        tokenizer.save_pretrained(target)

    info = registry.create_version("reward", write, parent=None, notes="fresh head on policy/v0")
    registry.promote("reward", info.version)
    return registry


def baseline(registry: ModelRegistry, items, seconds: float) -> float:
    info = registry.promoted("reward")
    model = ScalarHeadModel.from_pretrained(info.path).eval()
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    done, started = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - started < seconds:
            prompt, answer = items[done % len(items)]
            score_answers(model, tokenizer, [(prompt, answer)], batch_size=1)
            done += 1
    return done / (time.perf_counter() - started)


def served(registry: ModelRegistry, items, seconds: float, callers: int) -> tuple[float, float]:
    settings = RewardSettings(
        FLYWHEEL_MODEL_STORE=registry.root,
        grpc_port=0,
        device="cpu",
        metrics_port=0,
        FLYWHEEL_REDIS_URL="redis://127.0.0.1:1/0",  # no promotions to follow here
    )
    server = RewardServer(settings)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    counts = [0] * callers
    stop = threading.Event()

    def caller(index: int) -> None:
        n = index
        while not stop.is_set():
            prompt, answer = items[n % len(items)]
            stub.Score(
                reward_pb2.ScoreRequest(
                    prompt=[common_pb2.ChatMessage(**m) for m in prompt], answers=[answer]
                ),
                timeout=60,
            )
            counts[index] += 1
            n += callers

    for i in range(callers):  # warm-up call each, not counted
        caller_warm = items[i % len(items)]
        stub.Score(
            reward_pb2.ScoreRequest(
                prompt=[common_pb2.ChatMessage(**m) for m in caller_warm[0]],
                answers=[caller_warm[1]],
            )
        )
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - started
    channel.close()
    server.stop()
    return sum(counts) / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("data/models"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--callers", type=int, default=32)
    args = parser.parse_args()
    items = workload(64)
    with tempfile.TemporaryDirectory() as tmp:
        registry = reward_registry(args.store, Path(tmp) / "models")
        one = baseline(registry, items, args.seconds)
        print(f"one at a time (RM library, batch 1):   {one:7.1f} answers/s")
        ours, _ = served(registry, items, args.seconds, args.callers)
        print(f"reward service, {args.callers} concurrent callers: {ours:7.1f} answers/s")
        print(f"ratio: {ours / one:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
