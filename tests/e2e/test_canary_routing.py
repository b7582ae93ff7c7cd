"""Canary routing through the public API: during a canary the gateway sends a stable share of
the API keys to it, each key always to the same version, and the feedback service records the
version that answered; once the canary ends every key gets the promoted version again."""

from __future__ import annotations

import grpc
import httpx
import openai
import pytest

from services.common.api_keys import ApiKeyStore
from services.common.promotions import announce_promotion
from services.inference.gateway.canary import bucket
from tests.harness import wait_for

SHARE = 0.5
MESSAGES = [{"role": "user", "content": "Which version are you?"}]


@pytest.fixture
def gateway_overrides() -> dict:
    return {"canary_refresh_s": 0.2}


def _keys_on_both_sides(stack) -> dict[str, list[str]]:
    """API keys of this gateway, at least two whose bucket lies in the canary's share and two
    outside it (new keys are random, so drawn until both sides have two)."""
    store = ApiKeyStore(stack.settings.resolved_api_keys_file)
    sides: dict[str, list[str]] = {"v1": [], "v0": []}
    while min(len(keys) for keys in sides.values()) < 2:
        key, record = store.create(f"user-{sum(map(len, sides.values()))}")
        sides["v1" if bucket(record.id, "v1") < SHARE else "v0"].append(key)
    # The gateway re-reads the key file about once a second.
    wait_for(lambda: _accepted(stack, key), 30, "the gateway to know the new keys")
    return sides


def _accepted(stack, key: str) -> bool:
    try:
        stack.client(key).models.list()
    except openai.AuthenticationError:
        return False
    return True


def _answered_by(stack, key: str, stream: bool) -> tuple[str, str]:
    """(system_fingerprint, response id) of one chat answer for ``key``."""
    client = stack.client(key)
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="policy", messages=MESSAGES, max_tokens=3, stream=True
            )
        )
        return chunks[0].system_fingerprint, chunks[-1].model_extra["flywheel"]["response_ids"][0]
    reply = client.chat.completions.create(model="policy", messages=MESSAGES, max_tokens=3)
    return reply.system_fingerprint, reply.choices[0].model_extra["response_id"]


def _recorded(feedback, response_id: str) -> bool:
    try:
        feedback.get(response_id)
    except grpc.RpcError:
        return False
    return True


def test_a_share_of_the_keys_gets_the_canary_and_keeps_it(
    stack, feedback, engine_server, policy_store, gateway_redis_url
):
    sides = _keys_on_both_sides(stack)
    engine_info = f"http://127.0.0.1:{engine_server.http.port}/info"
    policy_store.start_canary("policy", "v1", SHARE)
    announce_promotion(gateway_redis_url, "policy", "v1", "canary")
    wait_for(
        lambda: httpx.get(engine_info).json()["canary_version"] == "v1", 60, "the canary to load"
    )
    wait_for(
        lambda: _answered_by(stack, sides["v1"][0], stream=False)[0] == "v1",
        30,
        "the gateway to route to the canary",
    )

    answers = []  # (expected version, answered version, response id)
    for expected, keys in sides.items():
        for key in keys:
            for stream in (False, True, False):
                answers.append((expected, *_answered_by(stack, key, stream)))
    assert all(expected == answered for expected, answered, _ in answers), answers
    ids = [response_id for *_, response_id in answers]
    wait_for(lambda: all(_recorded(feedback, i) for i in ids), 30, "the answers' records")
    assert [feedback.get(i).model_version for i in ids] == [e for e, _, _ in answers]
    routed = httpx.get(f"{stack.url}/metrics").text
    assert "flywheel_gateway_canary_requests_total" in routed

    policy_store.end_canary("policy", "lost")
    announce_promotion(gateway_redis_url, "policy", "v1", "end-canary")
    wait_for(
        lambda: _answered_by(stack, sides["v1"][0], stream=False)[0] == "v0",
        30,
        "the canary's keys to get the promoted version again",
    )
    assert _answered_by(stack, sides["v1"][1], stream=True)[0] == "v0"
