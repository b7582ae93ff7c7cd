"""The gateway as a hostile client meets it: every error in OpenAI's shape, validation before
the rate limit, strict types, poison parameters that hurt nobody, and request metrics."""

from __future__ import annotations

import threading

import httpx
import pytest

from services.common.api_keys import ApiKeyStore
from services.common.credentials import api_key_id
from tests.harness import wait_for

MESSAGES = [{"role": "user", "content": "Name a colour."}]


def post(stack, body=None, *, content=None, headers=None, path="/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {stack.key}", **(headers or {})}
    if content is not None:
        headers.setdefault("content-type", "application/json")
        return httpx.post(f"{stack.url}{path}", content=content, headers=headers, timeout=60)
    return httpx.post(f"{stack.url}{path}", json=body, headers=headers, timeout=60)


def assert_openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_unknown_routes_and_wrong_methods_get_openai_errors(stack):
    assert_openai_error(httpx.get(f"{stack.url}/v1/nope"), 404)
    assert_openai_error(httpx.post(f"{stack.url}/v1/completions", json={}), 404)
    assert_openai_error(httpx.get(f"{stack.url}/v1/chat/completions"), 405)
    assert_openai_error(httpx.delete(f"{stack.url}/v1/models"), 405)


def test_bodies_that_cannot_be_read_get_openai_errors(stack):
    assert_openai_error(
        post(stack, content=b'{"messages": [{"role": "user", "content": "\xff"}]}'), 400
    )
    assert_openai_error(post(stack, content=b"{not json"), 400)
    assert_openai_error(post(stack, content=b"[1, 2]"), 400)


@pytest.mark.parametrize("gateway_overrides", [{"max_body_bytes": 2048}])
def test_an_oversized_chunked_body_gets_413(stack):
    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    response = httpx.post(
        f"{stack.url}/v1/chat/completions",
        content=chunks(),  # no Content-Length: Transfer-Encoding: chunked
        headers={"Authorization": f"Bearer {stack.key}", "content-type": "application/json"},
    )
    assert_openai_error(response, 413)
    within = post(stack, {"messages": MESSAGES, "max_tokens": 2})
    assert within.status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", "2"), ("stream", "yes"), ("max_tokens", 2.0), ("stream", 1), ("temperature", "0")],
)
def test_types_are_not_coerced(stack, field, value):
    error = assert_openai_error(post(stack, {"messages": MESSAGES, field: value}), 400)
    assert error["param"] == field and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"1e309"])
def test_non_finite_numbers_are_refused(stack, value):
    body = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": ' + value + b"}"
    assert assert_openai_error(post(stack, content=body), 400)["param"] == "temperature"


@pytest.mark.parametrize("gateway_overrides", [{"rate_limit_burst": 2, "max_n": 4}])
def test_requests_that_can_never_succeed_cost_nothing(stack):
    for hopeless in (
        {"messages": MESSAGES, "n": 100},
        {"messages": MESSAGES, "best_of": 1000},
        {"messages": []},
        {"messages": MESSAGES, "seed": 2**64},
    ):
        for _ in range(3):  # more than the burst
            assert_openai_error(post(stack, hopeless), 400)
    for _ in range(2):  # the whole burst is still there
        assert post(stack, {"messages": MESSAGES, "max_tokens": 1}).status_code == 200
    assert_openai_error(post(stack, {"messages": MESSAGES, "max_tokens": 1}), 429)


def test_a_poison_seed_is_refused_and_a_concurrent_stream_completes(stack):
    greedy = {"messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    expected = post(stack, greedy).json()["choices"][0]["message"]["content"]
    streamed: dict = {}

    def stream():
        text = ""
        with httpx.stream(
            "POST",
            f"{stack.url}/v1/chat/completions",
            json={**greedy, "stream": True},
            headers={"Authorization": f"Bearer {stack.key}"},
            timeout=60,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunk = httpx.Response(200, content=line[6:]).json()
                    assert "error" not in chunk, chunk
                    for choice in chunk["choices"]:
                        text += choice["delta"].get("content", "")
        streamed["text"] = text

    worker = threading.Thread(target=stream)
    worker.start()
    poison = {"messages": MESSAGES, "seed": 18446744073709551616, "max_tokens": 4}
    error = assert_openai_error(post(stack, poison), 400)
    assert error["param"] == "seed"
    edge = {"messages": MESSAGES, "seed": 2**64 - 1, "n": 2, "max_tokens": 4}
    assert assert_openai_error(post(stack, edge), 400)["param"] == "seed"
    worker.join(60)
    assert streamed["text"] == expected
    assert httpx.get(f"{stack.url}/readyz").status_code == 200


def test_requests_are_counted_by_route_and_status(stack):
    post(stack, {"messages": MESSAGES, "max_tokens": 1})
    post(stack, {"messages": []})
    httpx.get(f"{stack.url}/no/such/route")
    metrics = httpx.get(f"{stack.url}/metrics").text
    for line in (
        'flywheel_gateway_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
        'flywheel_gateway_requests_total{method="POST",route="/v1/chat/completions",status="400"}',
        'flywheel_gateway_requests_total{method="GET",route="other",status="404"}',
        'flywheel_gateway_request_duration_seconds_count{route="/v1/chat/completions"}',
        'flywheel_gateway_requests_in_flight{route="/v1/chat/completions"} 0.0',
    ):
        assert line in metrics, line


def test_openapi_documents_every_status_and_the_stream(stack):
    spec = httpx.get(f"{stack.url}/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "413", "429", "502", "503"} <= set(chat)
    assert "text/event-stream" in chat["200"]["content"]
    schema = spec["components"]["schemas"]["ChatBody"]["properties"]["messages"]
    assert schema["minItems"] == 1


@pytest.mark.parametrize("gateway_overrides", [{"revocation_publish_s": 0.2}])
def test_a_revoked_key_can_no_longer_rate_anywhere(stack, feedback):
    reply = post(stack, {"messages": MESSAGES, "max_tokens": 2, "n": 2}).json()
    ids, token = reply["flywheel"]["response_ids"], reply["flywheel"]["feedback_token"]
    wait_for(lambda: feedback.interaction_count() == 2, what="the records")
    by_key = {"Authorization": f"Bearer {stack.key}"}

    def thumb(headers, response_id, event):
        body = {"kind": "thumb", "response_id": response_id, "value": 1, "client_event_id": event}
        return httpx.post(f"{feedback.http_url}/v1/feedback", json=body, headers=headers)

    assert thumb(by_key, ids[0], "before").status_code == 201
    # An operator revokes the key in the gateway's key file (no CLI, so no direct publish):
    # the gateway refuses it, and its publisher carries the revocation to the feedback service.
    assert ApiKeyStore(stack.settings.resolved_api_keys_file).revoke(api_key_id(stack.key))
    wait_for(lambda: post(stack, {"messages": MESSAGES}).status_code == 401, what="the gateway")
    wait_for(lambda: thumb(by_key, ids[1], "after").status_code == 401, what="feedback")
    refused = thumb(by_key, ids[1], "after-again").json()["error"]
    assert refused["code"] == "revoked_api_key"
    by_token = thumb({"X-Feedback-Token": token}, ids[1], "token")
    assert by_token.status_code == 401 and by_token.json()["error"]["code"] == "revoked_api_key"
    replay = thumb(by_key, ids[0], "before")  # even a retry of a vote accepted earlier
    assert replay.status_code == 401
    read = httpx.get(f"{feedback.http_url}/v1/interactions/{ids[0]}", headers=by_key)
    assert read.status_code == 401
