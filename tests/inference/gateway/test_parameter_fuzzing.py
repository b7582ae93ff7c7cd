"""Property-based: random and boundary chat requests fired at the gateway while a greedy
stream runs beside them. Every answer is a 2xx or a 4xx in OpenAI's shape, the greedy answers
do not change, nothing stays in flight afterwards, and the stack stays ready."""

from __future__ import annotations

import threading

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import wait_for
from tests.inference.engine.test_parameter_fuzzing import (
    CHAOS_ONLY_CHAT,
    FUZZ,
    VALID_CHAT,
    numbers,
    parameters,
    post_raw,
)
from tests.schema_fuzzing import fuzz_api

GATEWAY_CHAT = parameters(
    {**VALID_CHAT, "best_of": st.integers(1, 3), "user": st.text(max_size=8)},
    (*CHAOS_ONLY_CHAT, "conversation_id"),
)
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture
def gateway_overrides():
    return {"rate_limit_burst": 10_000, "rate_limit_requests_per_minute": 1e6, "max_n": 3}


def test_random_chat_requests_never_hurt_the_gateway_or_other_requests(stack, engine_server):
    auth = {"Authorization": f"Bearer {stack.key}"}
    client = httpx.Client(base_url=stack.url, timeout=60, headers=auth)
    greedy = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    expected = client.post("/v1/chat/completions", json=greedy).json()
    expected_text = expected["choices"][0]["message"]["content"]
    wrong: list = []
    answers = 0
    stop = threading.Event()

    def bystander():
        nonlocal answers
        with httpx.Client(base_url=stack.url, timeout=60, headers=auth) as own:
            while not stop.is_set():
                reply = own.post("/v1/chat/completions", json=greedy)
                text = (
                    reply.json()["choices"][0]["message"]["content"]
                    if reply.is_success
                    else reply.text
                )
                answers += 1
                if text != expected_text:
                    wrong.append(text)

    statuses: list[int] = []

    @FUZZ
    @given(fields=GATEWAY_CHAT, extra=st.dictionaries(st.text(max_size=6), numbers(), max_size=2))
    def chat(fields, extra):
        body = {**extra, "messages": MESSAGES, **{k: v[1] for k, v in fields.items() if v}}
        response = post_raw(client, "/v1/chat/completions", body)
        statuses.append(response.status_code)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
        elif response.headers["content-type"].startswith("text/event-stream"):
            assert '"error"' not in response.text and response.text.endswith("data: [DONE]\n\n")

    thread = threading.Thread(target=bystander, daemon=True)
    thread.start()
    try:
        chat()
    finally:
        stop.set()
        thread.join(60)
        client.close()
    assert statuses.count(200) >= 10 and sum(400 <= s < 500 for s in statuses) >= 10, statuses
    assert answers > 0 and wrong == []
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'flywheel_gateway_requests_in_flight{route="/v1/chat/completions"} 0.0' in metrics
    scheduler = engine_server.scheduler
    wait_for(lambda: scheduler.batch_size == 0 and scheduler.queue_size == 0, what="idle engine")
    assert httpx.get(f"{stack.url}/readyz").status_code == 200


def test_schema_fuzzing_of_the_gateway_api(stack):
    calls = fuzz_api(stack.url, headers={"Authorization": f"Bearer {stack.key}"}, max_examples=15)
    assert {label.split(" [")[0] for label in calls} >= {
        "POST /v1/chat/completions",
        "GET /v1/models",
    }
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'flywheel_gateway_requests_in_flight{route="/v1/chat/completions"} 0.0' in metrics
