"""TGI's protocol as its own client sees it: huggingface_hub.InferenceClient works unchanged."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError as HubValidationError
from prometheus_client import REGISTRY

from services.common.model_loading import load_version


def reference_greedy(policy_store, version: str, prompt: str, new_tokens: int) -> str:
    """What transformers' own generate makes of the prompt, one request alone."""
    _, model, tokenizer = load_version(policy_store, f"policy/{version}", device="cpu")
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_text_generation_plain_details_and_stream(engine):
    client = InferenceClient(engine.url)
    text = client.text_generation("The sky is", max_new_tokens=6)
    detailed = client.text_generation("The sky is", max_new_tokens=6, details=True)
    assert detailed.generated_text == text
    assert detailed.details.finish_reason == "length"
    assert detailed.details.generated_tokens == 6 == len(detailed.details.tokens)
    assert all(t.logprob <= 0 for t in detailed.details.tokens)
    assert "".join(t.text for t in detailed.details.tokens if not t.special) == text

    events = list(client.text_generation("The sky is", max_new_tokens=6, stream=True, details=True))
    assert [e.token.id for e in events] == [t.id for t in detailed.details.tokens]
    assert all(e.generated_text is None for e in events[:-1])
    assert events[-1].generated_text == text
    assert events[-1].details.finish_reason == "length"
    assert events[-1].details.generated_tokens == 6


def test_concurrent_greedy_requests_match_generate_alone(engine, policy_store):
    prompts = [f"Request number {i} says" for i in range(6)]
    expected = [reference_greedy(policy_store, "v0", p, 8) for p in prompts]
    results: list = [None] * len(prompts)

    def call(i):
        r = engine.http.post(
            "/generate", json={"inputs": prompts[i], "parameters": {"max_new_tokens": 8}}
        )
        results[i] = r.json()["generated_text"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == expected


def test_compat_route_answers_a_list_or_a_stream(engine):
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3}}
    listed = engine.http.post("/", json=body)
    assert listed.status_code == 200 and isinstance(listed.json(), list)
    with engine.http.stream("POST", "/", json={**body, "stream": True}) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data:")]
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert len(lines) == 3


def test_sampling_with_a_seed_repeats_and_best_of_returns_the_others(engine):
    params = {"max_new_tokens": 8, "do_sample": True, "temperature": 0.8, "seed": 7}
    first = engine.http.post("/generate", json={"inputs": "Once", "parameters": params}).json()
    again = engine.http.post("/generate", json={"inputs": "Once", "parameters": params}).json()
    assert first == again
    best = engine.http.post(
        "/generate",
        json={
            "inputs": "Once",
            "parameters": {"max_new_tokens": 4, "do_sample": True, "best_of": 3, "details": True},
        },
    ).json()
    assert len(best["details"]["best_of_sequences"]) == 2
    chosen = sum(t["logprob"] for t in best["details"]["tokens"])
    others = [sum(t["logprob"] for t in s["tokens"]) for s in best["details"]["best_of_sequences"]]
    assert chosen >= max(others)


def test_stop_sequence_ends_generation(engine):
    free = engine.http.post(
        "/generate", json={"inputs": "Count", "parameters": {"max_new_tokens": 12}}
    ).json()["generated_text"]
    stop = free[3:5]  # a piece the greedy answer is known to contain
    stopped = engine.http.post(
        "/generate",
        json={
            "inputs": "Count",
            "parameters": {"max_new_tokens": 12, "stop": [stop], "details": True},
        },
    ).json()
    assert stopped["details"]["finish_reason"] == "stop_sequence"
    assert stopped["generated_text"].endswith(stop)
    assert free.startswith(stopped["generated_text"])


def test_info_health_and_version_on_every_response(engine):
    info = engine.http.get("/info")
    assert info.json()["model_version"] == "v0"
    assert info.json()["max_best_of"] >= 1 and info.headers["x-model-version"] == "v0"
    assert engine.http.get("/health").status_code == 200
    assert engine.http.get("/livez").status_code == 200
    generated = engine.http.post("/generate", json={"inputs": "Hi", "parameters": {}})
    assert generated.headers["x-model-version"] == "v0"
    assert len(generated.json()["generated_text"]) > 0  # default max_new_tokens applies


def test_tgi_client_raises_its_validation_error(engine):
    client = InferenceClient(engine.url)
    with pytest.raises(HubValidationError, match="temperature"):
        client.text_generation("Hi", max_new_tokens=3, temperature=0.0)


def test_metrics_use_tgi_names(engine):
    engine.http.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
    text = engine.http.get("/metrics").text
    for name in (
        "tgi_request_count",
        "tgi_request_success",
        "tgi_request_duration_bucket",
        "tgi_request_generated_tokens_bucket",
        "tgi_request_mean_time_per_token_duration_bucket",
        "tgi_queue_size",
        "tgi_batch_current_size",
        "tgi_batch_inference_duration_bucket",
    ):
        assert f"\n{name}" in text, name


def histogram(name: str) -> tuple[float, float]:
    """(observations, their sum) of an engine histogram in this process."""
    count = REGISTRY.get_sample_value(f"{name}_count") or 0.0
    return count, REGISTRY.get_sample_value(f"{name}_sum") or 0.0


def test_time_to_first_token_and_inter_token_latency_are_observed(engine):
    ttft = "flywheel_engine_time_to_first_token_seconds"
    itl = "flywheel_engine_inter_token_latency_seconds"
    ttft_before, itl_before = histogram(ttft), histogram(itl)
    started = time.perf_counter()
    reply = engine.http.post(
        "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 5, "details": True}}
    )
    elapsed = time.perf_counter() - started
    tokens = reply.json()["details"]["generated_tokens"]

    # One first token; then one gap per further token, each a decode step.
    ttft_count, ttft_sum = histogram(ttft)
    itl_count, itl_sum = histogram(itl)
    assert ttft_count - ttft_before[0] == 1
    assert itl_count - itl_before[0] == tokens - 1
    assert 0 < ttft_sum - ttft_before[1] < elapsed
    assert (ttft_sum - ttft_before[1]) + (itl_sum - itl_before[1]) < elapsed
