"""One bad request never hurts another: it fails alone, its slot comes back, the batch it
shared goes on with the same answers, and a scheduler that stops turning shows in liveness.

Some tests submit straight to the scheduler with values the HTTP schema refuses, to prove
the scheduler's own isolation (defence in depth) rather than the validation in front of it.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from services.inference.engine.sampling import SamplingParams
from services.inference.engine.scheduler import Failed, GenerationStream
from tests.harness import wait_for


@pytest.fixture
def engine_overrides():
    return {"stall_timeout_s": 1.0, "max_batch_size": 4}


def greedy_text(client: httpx.Client, prompt: str) -> str:
    response = client.post(
        "/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 24}}
    )
    assert response.status_code == 200, response.text
    return response.json()["generated_text"]


def stream_text(engine, prompt: str, out: dict) -> None:
    """A streamed greedy answer collected in ``out`` (text, events, error)."""
    text, errors = "", []
    with (
        httpx.Client(base_url=engine.url, timeout=60) as client,
        client.stream(
            "POST",
            "/generate_stream",
            json={"inputs": prompt, "parameters": {"max_new_tokens": 24}},
        ) as response,
    ):
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            event = httpx.Response(200, content=line[5:]).json()
            if "error" in event:
                errors.append(event)
            elif event["generated_text"] is not None:
                text = event["generated_text"]
    out.update(status=response.status_code, text=text, errors=errors)


def assert_no_slot_leaks(engine) -> None:
    scheduler = engine.server.scheduler
    wait_for(lambda: scheduler.batch_size == 0 and scheduler.queue_size == 0)
    metrics = engine.http.get("/metrics").text
    assert "tgi_batch_current_size 0.0" in metrics and "tgi_queue_size 0.0" in metrics


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616},
        {"messages": [{"role": "user", "content": "hi"}], "seed": 2**64 - 1, "n": 2},
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 1e-300},
    ],
)
def test_a_poison_chat_request_is_refused_and_a_concurrent_stream_completes(engine, body):
    expected = greedy_text(engine.http, "The weather today")
    out: dict = {}
    streamer = threading.Thread(target=stream_text, args=(engine, "The weather today", out))
    streamer.start()
    response = engine.http.post("/v1/chat/completions", json={**body, "max_tokens": 4})
    streamer.join(60)
    # A tiny temperature is legal (it samples almost greedily); an out-of-range seed is not.
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["error_type"] == "validation"
    assert out == {"status": 200, "text": expected, "errors": []}
    assert_no_slot_leaks(engine)
    assert engine.http.get("/health").status_code == 200


def test_nan_temperature_on_the_engine_is_refused(engine):
    response = engine.http.post(
        "/generate",
        content=b'{"inputs": "Hi", "parameters": {"temperature": NaN}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "finite" in response.json()["error"]


def _submit_raw(engine, params: SamplingParams) -> GenerationStream:
    policy = engine.server.policies.current
    ids = policy.tokenizer("Hello", add_special_tokens=False)["input_ids"]
    stream = GenerationStream()
    engine.server.scheduler.submit(policy, ids, params, stream)
    return stream


def _events_until_end(stream: GenerationStream) -> list:
    events = []
    while True:
        event = stream.next_blocking(timeout=30)
        events.append(event)
        if isinstance(event, Failed) or event.finished is not None:
            return events


@pytest.mark.parametrize(
    "poison",
    [
        SamplingParams(max_new_tokens=8, do_sample=True, seed=2**70),  # overflows the generator
        SamplingParams(max_new_tokens=8, temperature=float("nan")),  # NaN probabilities
    ],
    ids=["seed-overflow", "nan-temperature"],
)
def test_the_scheduler_fails_a_poisoned_request_alone(engine, poison):
    """Past validation (as a bug would let through): only that request fails."""
    expected = greedy_text(engine.http, "The weather today")
    out: dict = {}
    streamer = threading.Thread(target=stream_text, args=(engine, "The weather today", out))
    streamer.start()
    wait_for(lambda: engine.server.scheduler.batch_size > 0)
    poisoned = [_submit_raw(engine, poison) for _ in range(20)]  # more than max_batch_size
    for stream in poisoned:
        events = _events_until_end(stream)
        assert isinstance(events[-1], Failed), events[-1]
    streamer.join(60)
    assert out == {"status": 200, "text": expected, "errors": []}
    assert_no_slot_leaks(engine)
    # The engine still admits and answers: no slot was leaked by the 20 failures.
    assert greedy_text(engine.http, "The weather today") == expected


def test_a_failing_prefill_fails_only_the_request_that_caused_it(engine):
    """A prompt that breaks the forward pass, prefilled with others: each is retried alone."""
    policy = engine.server.policies.current
    model = policy.model
    real_forward = model.forward
    bad_token = policy.tokenizer.eos_token_id

    def forward(*args, input_ids=None, **kwargs):
        if input_ids is not None and input_ids.shape[1] > 1 and (input_ids == bad_token).any():
            raise RuntimeError("poisoned prompt")
        return real_forward(*args, input_ids=input_ids, **kwargs)

    model.forward = forward
    try:
        good = [GenerationStream() for _ in range(3)]
        bad = GenerationStream()
        ids = policy.tokenizer("Hello there", add_special_tokens=False)["input_ids"]
        params = SamplingParams(max_new_tokens=4)
        scheduler = engine.server.scheduler
        with scheduler._lock:  # queue all four before the loop looks: one prefill group
            for stream in good[:2]:
                scheduler._waiting.append(_request(policy, ids, params, stream))
            scheduler._waiting.append(_request(policy, [*ids, bad_token], params, bad))
            scheduler._waiting.append(_request(policy, ids, params, good[2]))
            scheduler._lock.notify_all()
        assert isinstance(_events_until_end(bad)[-1], Failed)
        for stream in good:
            assert _events_until_end(stream)[-1].finished.reason == "length"
    finally:
        del model.forward
    assert_no_slot_leaks(engine)


def _request(policy, ids, params, stream):
    from services.inference.engine.scheduler import _Request

    return _Request(policy, list(ids), params, stream)


def test_a_stuck_scheduler_turns_liveness_red(engine):
    model = engine.server.policies.current.model
    real_forward = model.forward
    release = threading.Event()

    def stuck_forward(*args, **kwargs):
        release.wait(30)  # a hung kernel or a deadlock
        return real_forward(*args, **kwargs)

    assert engine.http.get("/livez").status_code == 200
    model.forward = stuck_forward
    client = httpx.Client(base_url=engine.url, timeout=60)
    worker = threading.Thread(target=greedy_text, args=(client, "Hi"))
    try:
        worker.start()
        wait_for(lambda: engine.http.get("/livez").status_code == 503, timeout=10)
        assert engine.http.get("/livez").json()["error_type"] == "unhealthy"
        assert engine.http.get("/health").status_code == 503
    finally:
        del model.forward
        release.set()
        worker.join(30)
        client.close()
    wait_for(lambda: engine.http.get("/livez").status_code == 200)


def test_an_idle_engine_is_alive_however_long_it_waited(engine):
    time.sleep(1.5)  # longer than stall_timeout_s, with nothing to do
    assert engine.http.get("/livez").status_code == 200
    assert greedy_text(engine.http, "Hi")
