"""A new policy version goes live under load without a failed request, and every request
finishes on the weights it started with."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import pytest

from services.common.generated.flywheel.v1 import admin_pb2, admin_pb2_grpc
from services.common.promotions import announce_promotion
from tests.inference.engine.test_tgi_protocol import reference_greedy

PROMPTS = ["Swap one", "Swap two", "Swap three"]
NEW_TOKENS = 12


def test_reload_under_load_fails_nothing_and_each_answer_matches_its_version(engine, policy_store):
    expected = {
        (version, prompt): reference_greedy(policy_store, version, prompt, NEW_TOKENS)
        for version in ("v0", "v1")
        for prompt in PROMPTS
    }
    assert expected[("v0", PROMPTS[0])] != expected[("v1", PROMPTS[0])]
    stop = threading.Event()
    seen: list[tuple[str, str, int, str]] = []  # (prompt, version, status, text)

    def hammer(prompt: str) -> None:
        with httpx.Client(base_url=engine.url, timeout=60) as client:
            while not stop.is_set():
                body = {"inputs": prompt, "parameters": {"max_new_tokens": NEW_TOKENS}}
                response = client.post("/generate", json=body)
                text = response.json().get("generated_text", "")
                version = response.headers.get("x-model-version", "")
                seen.append((prompt, version, response.status_code, text))

    threads = [threading.Thread(target=hammer, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    time.sleep(1.0)
    reply = admin_pb2_grpc.ModelAdminStub(engine.admin).Reload(
        admin_pb2.ReloadRequest(version="v1"), timeout=60
    )
    assert (reply.previous_version, reply.current_version) == ("v0", "v1")
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(60)

    assert all(status == 200 for _, _, status, _ in seen)
    versions = [version for _, version, _, _ in seen]
    assert "v0" in versions and "v1" in versions
    for prompt, version, _, text in seen:
        assert text == expected[(version, prompt)], (prompt, version)
    current = admin_pb2_grpc.ModelAdminStub(engine.admin).CurrentVersion(
        admin_pb2.CurrentVersionRequest()
    )
    assert (current.role, current.version) == ("policy", "v1")


def test_a_promotion_announced_on_redis_is_followed(engine, policy_store, redis_url):
    policy_store.promote("policy", "v1")
    announce_promotion(redis_url, "policy", "v1", "promote")
    deadline = time.monotonic() + 20
    while engine.http.get("/info").json()["model_version"] != "v1":
        assert time.monotonic() < deadline, "the engine did not follow the promotion"
        time.sleep(0.1)


def test_reload_of_an_unknown_version_keeps_serving(engine):
    with pytest.raises(grpc.RpcError) as error:
        admin_pb2_grpc.ModelAdminStub(engine.admin).Reload(
            admin_pb2.ReloadRequest(version="v9"), timeout=10
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert engine.http.get("/info").json()["model_version"] == "v0"


def test_reload_without_the_service_credential_is_refused(engine):
    with (
        grpc.insecure_channel(f"127.0.0.1:{engine.server.admin.port}") as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        admin_pb2_grpc.ModelAdminStub(channel).Reload(
            admin_pb2.ReloadRequest(version="v1"), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert engine.http.get("/info").json()["model_version"] == "v0"
