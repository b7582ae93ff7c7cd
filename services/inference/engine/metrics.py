"""The engine's Prometheus metrics, under TGI's names so TGI's Grafana dashboards work.

TGI exports its counters without the ``_total`` suffix (``tgi_request_count``), which
prometheus_client's Counter always adds; so those are Gauges that only ever go up:
``rate()`` and ``increase()`` read them the same way.
"""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

REQUEST_COUNT = Gauge("tgi_request_count", "Generation requests received (a counter).")
REQUEST_SUCCESS = Gauge("tgi_request_success", "Requests that finished (a counter).")
REQUEST_FAILURE = Gauge(
    "tgi_request_failure", "Requests that failed, by error type (a counter).", ["err"]
)
REQUEST_DURATION = Histogram(
    "tgi_request_duration", "Request latency, seconds.", buckets=DURATION_BUCKETS
)
VALIDATION_DURATION = Histogram(
    "tgi_request_validation_duration", "Validation time, seconds.", buckets=DURATION_BUCKETS
)
QUEUE_DURATION = Histogram(
    "tgi_request_queue_duration", "Time waiting for a slot, seconds.", buckets=DURATION_BUCKETS
)
INFERENCE_DURATION = Histogram(
    "tgi_request_inference_duration", "Time generating, seconds.", buckets=DURATION_BUCKETS
)
TIME_PER_TOKEN = Histogram(
    "tgi_request_mean_time_per_token_duration",
    "Mean time per generated token, seconds.",
    buckets=DURATION_BUCKETS,
)
GENERATED_TOKENS = Histogram(
    "tgi_request_generated_tokens", "Tokens generated per request.", buckets=TOKEN_BUCKETS
)
INPUT_LENGTH = Histogram(
    "tgi_request_input_length", "Prompt tokens per request.", buckets=TOKEN_BUCKETS
)
MAX_NEW_TOKENS = Histogram(
    "tgi_request_max_new_tokens", "max_new_tokens asked for.", buckets=TOKEN_BUCKETS
)
QUEUE_SIZE = Gauge("tgi_queue_size", "Requests waiting for a batch slot.")
BATCH_SIZE = Gauge("tgi_batch_current_size", "Requests in the running batch.")
BATCH_NEXT_SIZE = Histogram(
    "tgi_batch_next_size", "Requests per forward pass.", buckets=BATCH_BUCKETS
)
BATCH_INFERENCE_COUNT = Gauge(
    "tgi_batch_inference_count", "Forward passes, by method (a counter).", ["method"]
)
BATCH_INFERENCE_SUCCESS = Gauge(
    "tgi_batch_inference_success", "Forward passes that succeeded (a counter).", ["method"]
)
BATCH_INFERENCE_DURATION = Histogram(
    "tgi_batch_inference_duration",
    "Forward pass plus token choice, seconds, by method.",
    ["method"],
    buckets=DURATION_BUCKETS,
)
# TGI has no per-token histograms (only each request's mean time per token), so these two
# carry flywheel's own names; they are what a streaming client feels.
TIME_TO_FIRST_TOKEN = Histogram(
    "flywheel_engine_time_to_first_token_seconds",
    "From a request being queued to its first token being chosen (queue wait plus prefill).",
    buckets=DURATION_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "flywheel_engine_inter_token_latency_seconds",
    "Time between a request's consecutive tokens (one per decode step it takes part in).",
    buckets=DURATION_BUCKETS,
)
CANCELLED = Gauge(
    "flywheel_engine_requests_cancelled", "Requests dropped because the client left (a counter)."
)
PREFIX_CACHE_HIT_TOKENS = Gauge(
    "flywheel_engine_prefix_cache_hit_tokens",
    "Prompt tokens whose keys and values came from the prefix cache instead of a prefill pass "
    "(a counter; against tgi_request_input_length_sum it gives the hit rate).",
)
PREFIX_CACHE_TOKENS = Gauge(
    "flywheel_engine_prefix_cache_tokens", "Prompt tokens the prefix cache holds now."
)
SERVING = Gauge(
    "flywheel_engine_model_serving", "1 for the policy version serving now.", ["version"]
)
CANARY_SERVING = Gauge(
    "flywheel_engine_canary_serving",
    "1 for the canary version loaded beside the promoted one (answers requests that name it).",
    ["version"],
)


def observe_batch(method: str, seconds: float, size: int) -> None:
    BATCH_INFERENCE_COUNT.labels(method).inc()
    BATCH_INFERENCE_SUCCESS.labels(method).inc()
    BATCH_INFERENCE_DURATION.labels(method).observe(seconds)
    BATCH_NEXT_SIZE.observe(size)
