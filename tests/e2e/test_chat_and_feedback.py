"""The public API end to end on loopback: the official openai client against the gateway,
in front of the real engine, reward and feedback services."""

from __future__ import annotations

import httpx
import openai
import pytest

from services.common.api_keys import ApiKeyStore
from services.inference.gateway.server import GatewayServer
from tests.harness import free_port, wait_for
from tests.stack_fixtures import gateway_settings

MESSAGES = [{"role": "user", "content": "Name a colour."}]


def test_chat_is_answered_and_recorded_with_the_feedback_service(stack, feedback):
    reply = stack.client().chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=6, temperature=0
    )
    choice = reply.choices[0]
    meta = reply.model_extra["flywheel"]
    response_id = choice.model_extra["response_id"]
    assert choice.message.content and reply.system_fingerprint == "v0"
    assert meta["response_ids"] == [response_id] and meta["feedback_token"].startswith("fwt_")
    wait_for(lambda: feedback.interaction_count() == 1, what="the record to arrive")
    stored = feedback.get(response_id)
    assert stored.answer == choice.message.content
    assert stored.model_version == "v0" and stored.candidate_count == 1
    assert [(m.role, m.content) for m in stored.messages] == [("user", "Name a colour.")]
    assert stored.sampling.temperature == 0 and not stored.sampling.do_sample


def test_n_candidates_form_one_group(stack, feedback):
    reply = stack.client().chat.completions.create(
        model="policy", messages=MESSAGES, n=3, max_tokens=5
    )
    ids = [c.model_extra["response_id"] for c in reply.choices]
    assert len(set(ids)) == 3 and [c.index for c in reply.choices] == [0, 1, 2]
    wait_for(lambda: feedback.interaction_count() == 3, what="three records")
    stored = [feedback.get(i) for i in ids]
    assert {s.candidate_group for s in stored} == {reply.model_extra["flywheel"]["candidate_group"]}
    assert [s.candidate_index for s in stored] == [0, 1, 2]


@pytest.mark.parametrize("stream", [False, True])
def test_each_candidate_is_recorded_with_the_sampling_in_effect(stack, feedback, stream):
    """Candidate i samples with seed + i; with no max_tokens the gateway's default is sent
    to the engine, and that is what the record says."""
    reply = stack.client().chat.completions.create(
        model="policy", messages=MESSAGES, n=3, seed=7, temperature=0.8, stream=stream
    )
    if stream:
        chunks = list(reply)
        ids = chunks[-1].model_extra["flywheel"]["response_ids"]
    else:
        ids = [c.model_extra["response_id"] for c in reply.choices]
    wait_for(lambda: feedback.interaction_count() == 3, what="three records")
    stored = [feedback.get(i).sampling for i in ids]
    assert [s.seed for s in stored] == [7, 8, 9]
    assert {s.max_new_tokens for s in stored} == {stack.settings.default_max_tokens}
    assert {round(s.temperature, 3) for s in stored} == {0.8}


def test_best_of_records_the_seed_of_the_answer_it_returns(stack, feedback):
    reply = stack.client().chat.completions.create(
        model="policy", messages=MESSAGES, seed=40, max_tokens=4, extra_body={"best_of": 3}
    )
    chosen = reply.model_extra["flywheel"]["best_of"]["chosen"]
    wait_for(lambda: feedback.interaction_count() == 1, what="the record")
    stored = feedback.get(reply.choices[0].model_extra["response_id"])
    assert stored.sampling.seed == 40 + chosen and stored.sampling.max_new_tokens == 4


def test_streaming_through_the_gateway(stack, feedback):
    whole = stack.client().chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=8, temperature=0
    )
    chunks = list(
        stack.client().chat.completions.create(
            model="policy", messages=MESSAGES, max_tokens=8, temperature=0, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    meta = chunks[-1].model_extra["flywheel"]
    wait_for(lambda: feedback.interaction_count() == 2, what="both records")
    assert feedback.get(meta["response_ids"][0]).answer == text


def test_best_of_picks_the_reward_models_favourite(stack):
    reply = stack.client().chat.completions.create(
        model="policy", messages=MESSAGES, max_tokens=5, extra_body={"best_of": 3}
    )
    best_of = reply.model_extra["flywheel"]["best_of"]
    assert best_of["reranked"] is True and len(best_of["rewards"]) == 3
    assert best_of["chosen"] == max(range(3), key=lambda i: best_of["rewards"][i])
    assert len(reply.choices) == 1


def test_best_of_without_a_reward_service_says_so(
    tmp_path, gateway_redis_url, engine_server, feedback
):
    settings = gateway_settings(
        tmp_path,
        gateway_redis_url,
        engine_server.http.port,
        feedback.target,
        f"127.0.0.1:{free_port()}",
    )
    settings.resolved_api_keys_file.parent.mkdir(parents=True, exist_ok=True)
    key = ApiKeyStore(settings.resolved_api_keys_file).ensure_dev_key(tmp_path / "k")
    gateway = GatewayServer(settings)
    gateway.start()
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{gateway.http.port}/v1", api_key=key, max_retries=0
        )
        reply = client.chat.completions.create(
            model="policy", messages=MESSAGES, max_tokens=4, extra_body={"best_of": 2}
        )
    finally:
        gateway.stop()
    best_of = reply.model_extra["flywheel"]["best_of"]
    assert best_of["reranked"] is False and "reward service unavailable" in best_of["reason"]


def test_keys_are_required(stack):
    with pytest.raises(openai.AuthenticationError):
        stack.client("fwk_not-a-key").chat.completions.create(model="policy", messages=MESSAGES)
    no_key = httpx.post(f"{stack.url}/v1/chat/completions", json={"messages": MESSAGES})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("gateway_overrides", [{"rate_limit_burst": 2}])
def test_rate_limit_per_key(stack):
    client = stack.client()
    for _ in range(2):
        client.chat.completions.create(model="policy", messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="policy", messages=MESSAGES, max_tokens=1)
    assert int(refused.value.response.headers["retry-after"]) >= 1


@pytest.mark.parametrize("gateway_overrides", [{"max_body_bytes": 2048, "max_n": 2}])
def test_bad_requests_get_openai_errors(stack):
    client = stack.client()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="policy", messages=[])
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(model="policy", messages=MESSAGES, n=3)
    assert too_many.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="policy", messages=[{"role": "wizard", "content": "hi"}]
        )
    huge = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x" * 5000}]},
        headers={"Authorization": f"Bearer {stack.key}"},
    )
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "invalid_request_error"


def test_models_and_probes(stack):
    models = stack.client().models.list()
    assert [m.id for m in models.data] == ["policy"]
    assert httpx.get(f"{stack.url}/healthz").status_code == 200
    assert httpx.get(f"{stack.url}/readyz").status_code == 200


def test_answers_served_while_feedback_is_down_survive_a_gateway_restart(
    tmp_path, gateway_redis_url, engine_server, feedback, reward_target
):
    settings = gateway_settings(
        tmp_path, gateway_redis_url, engine_server.http.port, feedback.target, reward_target
    )
    settings.resolved_api_keys_file.parent.mkdir(parents=True, exist_ok=True)
    key = ApiKeyStore(settings.resolved_api_keys_file).ensure_dev_key(tmp_path / "k")
    feedback.stop()
    gateway = GatewayServer(settings)
    gateway.start()
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{gateway.http.port}/v1", api_key=key, max_retries=0
    )
    served = [
        client.chat.completions.create(model="policy", messages=MESSAGES, max_tokens=3)
        for _ in range(3)
    ]
    gateway.stop()  # the feedback service is still down: the records stay in the spool
    restarted = GatewayServer(settings)
    restarted.start()
    try:
        feedback.start()
        wait_for(lambda: feedback.interaction_count() == 3, timeout=20, what="the spooled records")
    finally:
        restarted.stop()
    for reply in served:
        response_id = reply.choices[0].model_extra["response_id"]
        assert feedback.get(response_id).answer == reply.choices[0].message.content
