"""Overload gets 429, a client that leaves stops costing compute, and a full engine is
still alive and ready."""

from __future__ import annotations

import threading

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.harness import wait_for


def cancelled() -> float:
    return REGISTRY.get_sample_value("flywheel_engine_requests_cancelled") or 0.0


@pytest.fixture
def engine_overrides():
    return {"max_concurrent_requests": 2, "max_batch_size": 1, "max_total_tokens": 4096}


def long_request(engine, results, index, tokens=400):
    with httpx.Client(base_url=engine.url, timeout=120) as client:
        response = client.post(
            "/generate", json={"inputs": "Go on", "parameters": {"max_new_tokens": tokens}}
        )
    results[index] = response


def test_past_max_concurrent_requests_answers_429_and_stays_alive(engine):
    results: dict = {}
    threads = [threading.Thread(target=long_request, args=(engine, results, i)) for i in range(2)]
    for t in threads:
        t.start()
    scheduler = engine.server.scheduler
    wait_for(lambda: scheduler.batch_size + scheduler.queue_size == 2)
    refused = engine.http.post("/generate", json={"inputs": "Hi", "parameters": {}})
    assert refused.status_code == 429
    assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    # Busy with a full queue is alive and ready: restarting it would only lose the work.
    assert engine.http.get("/livez").status_code == 200
    assert engine.http.get("/health").status_code == 200
    for t in threads:
        t.join(120)
    assert [results[i].status_code for i in range(2)] == [200, 200]


def test_a_stream_whose_client_leaves_is_cancelled(engine):
    before = cancelled()
    with (
        httpx.Client(base_url=engine.url, timeout=60) as client,
        client.stream(
            "POST", "/generate_stream", json={"inputs": "Go", "parameters": {"max_new_tokens": 900}}
        ) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # read one token, then hang up
    scheduler = engine.server.scheduler
    wait_for(lambda: scheduler.batch_size == 0 and scheduler.queue_size == 0)
    assert cancelled() == before + 1


def test_a_waiting_request_whose_client_leaves_is_dropped(engine):
    results: dict = {}
    busy = threading.Thread(target=long_request, args=(engine, results, 0, 1000))
    busy.start()
    scheduler = engine.server.scheduler
    wait_for(lambda: scheduler.batch_size == 1)
    before = cancelled()
    with pytest.raises(httpx.ReadTimeout):  # queued behind the busy one, then gives up
        httpx.post(
            f"{engine.url}/generate",
            json={"inputs": "Hi", "parameters": {"max_new_tokens": 5}},
            timeout=0.5,
        )
    busy.join(120)
    wait_for(lambda: cancelled() == before + 1)
    assert results[0].status_code == 200
