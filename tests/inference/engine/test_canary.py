"""A canary is loaded beside the promoted version: requests that name it get it, every other
request the promoted one, and once it ends everyone gets the promoted one again."""

from __future__ import annotations

from services.common.promotions import announce_promotion
from tests.harness import wait_for
from tests.inference.engine.test_tgi_protocol import reference_greedy

PROMPT = "Canary prompt"
NEW_TOKENS = 8


def _generate(engine, adapter_id: str | None = None) -> tuple[str, str]:
    parameters = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    if adapter_id is not None:
        parameters["adapter_id"] = adapter_id
    response = engine.http.post("/generate", json={"inputs": PROMPT, "parameters": parameters})
    assert response.status_code == 200, response.text
    return response.headers["x-model-version"], response.json()["generated_text"]


def _chat_version(engine, model: str | None) -> str:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    if model is not None:
        body["model"] = model
    response = engine.http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["system_fingerprint"]


def _info(engine) -> dict:
    return engine.http.get("/info").json()


def test_requests_naming_the_canary_get_it_and_the_rest_the_promoted_version(
    engine, policy_store, redis_url
):
    assert _info(engine)["canary_version"] is None and _info(engine)["canary_share"] == 0.0
    policy_store.start_canary("policy", "v1", 0.25)
    announce_promotion(redis_url, "policy", "v1", "canary")
    wait_for(lambda: _info(engine)["canary_version"] == "v1", 60, "the engine to load v1")
    assert _info(engine)["canary_share"] == 0.25 and _info(engine)["model_version"] == "v0"

    # Each version answers with its own weights (greedy: what transformers makes of each).
    assert _generate(engine, "v1") == ("v1", reference_greedy(policy_store, "v1", PROMPT, 8))
    assert _generate(engine) == ("v0", reference_greedy(policy_store, "v0", PROMPT, 8))
    assert _chat_version(engine, "v1") == "v1"
    assert _chat_version(engine, None) == "v0"
    # A version not loaded here (or any other model name) gets the promoted one, and says so.
    assert _chat_version(engine, "v7") == "v0" and _chat_version(engine, "policy") == "v0"
    assert 'flywheel_engine_canary_serving{version="v1"} 1.0' in engine.http.get("/metrics").text

    policy_store.end_canary("policy", "lost")
    announce_promotion(redis_url, "policy", "v1", "end-canary")
    wait_for(lambda: _info(engine)["canary_version"] is None, 30, "the engine to drop v1")
    assert _chat_version(engine, "v1") == "v0"
    assert 'flywheel_engine_canary_serving{version="v1"} 0.0' in engine.http.get("/metrics").text
