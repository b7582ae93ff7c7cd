"""The reward service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter(
    "flywheel_reward_calls", "Score / ScoreBatch calls by gRPC status.", ["method", "code"]
)
CALL_LATENCY = Histogram(
    "flywheel_reward_call_duration_seconds",
    "Time from a call's arrival to its answer.",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ANSWERS_SCORED = Counter("flywheel_reward_answers_scored", "Answers scored.")
BATCH_SIZE = Histogram(
    "flywheel_reward_batch_size",
    "Answers per forward pass (dynamic batching across calls).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
QUEUE_ITEMS = Gauge("flywheel_reward_queue_items", "Answers waiting for a forward pass.")
SERVING = Gauge(
    "flywheel_reward_model_serving",
    "1 for the reward model version being served.",
    ["version"],
)
RELOADS = Counter("flywheel_reward_reloads", "Switches to another reward model version.")
