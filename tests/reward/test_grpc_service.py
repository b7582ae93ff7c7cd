"""The reward service over real gRPC on loopback, with tiny RMs in a temporary registry."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from services.common.generated.flywheel.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    reward_pb2,
    reward_pb2_grpc,
)
from services.common.grpc_errors import field_violations
from services.common.promotions import announce_promotion
from services.reward.server import RewardServer
from services.reward.settings import RewardSettings
from tests.harness import assert_refused_without_credential, internal_channel


@pytest.fixture
def server(reward_store, redis_url):
    settings = RewardSettings(
        FLYWHEEL_MODEL_STORE=reward_store.root,
        FLYWHEEL_REDIS_URL=redis_url,
        grpc_port=0,
        device="cpu",
        precision="fp32",  # exact comparisons below; bf16 is covered in test_scorer
        max_tokens=256,
        drain_timeout_s=1,
    )
    server = RewardServer(settings)
    port = server.start()
    channel = internal_channel(f"127.0.0.1:{port}")
    yield server, channel
    channel.close()
    server.stop()


def request(*answers: str) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(
        prompt=[common_pb2.ChatMessage(role="user", content="Name a colour.")], answers=answers
    )


def test_score_and_score_batch_agree_and_name_the_version(server):
    _, channel = server
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    one = stub.Score(request("Blue.", "Red."), timeout=30)
    assert one.model_version == "v0" and len(one.rewards) == 2
    batch = stub.ScoreBatch(
        reward_pb2.ScoreBatchRequest(requests=[request("Blue.", "Red."), request("Green.")]),
        timeout=30,
    )
    assert batch.model_version == "v0"
    assert list(batch.responses[0].rewards) == pytest.approx(list(one.rewards), abs=1e-5)
    assert len(batch.responses[1].rewards) == 1


def test_bad_input_names_the_field(server):
    _, channel = server
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    with pytest.raises(grpc.RpcError) as empty:
        stub.Score(reward_pb2.ScoreRequest(), timeout=30)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(empty.value)} == {"prompt", "answers"}
    with pytest.raises(grpc.RpcError) as long:
        stub.ScoreBatch(
            reward_pb2.ScoreBatchRequest(requests=[request("ok"), request("ok", "word " * 400)]),
            timeout=30,
        )
    assert long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(long.value)] == ["requests[1].answers[1]"]


def test_admin_reload_and_current_version(server):
    _, channel = server
    admin = admin_pb2_grpc.ModelAdminStub(channel)
    assert admin.CurrentVersion(admin_pb2.CurrentVersionRequest()).version == "v0"
    reloaded = admin.Reload(admin_pb2.ReloadRequest(version="v1"), timeout=60)
    assert (reloaded.previous_version, reloaded.current_version) == ("v0", "v1")
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    assert stub.Score(request("Blue."), timeout=30).model_version == "v1"
    with pytest.raises(grpc.RpcError) as missing:
        admin.Reload(admin_pb2.ReloadRequest(version="v9"), timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert admin.CurrentVersion(admin_pb2.CurrentVersionRequest()).version == "v1"


def test_health_serving_once_loaded(server):
    _, channel = server
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="flywheel.v1.RewardService"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_a_promotion_announced_on_redis_is_followed(server, reward_store, redis_url):
    _, channel = server
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    reward_store.promote("reward", "v1")
    deadline = time.monotonic() + 20
    version = stub.Score(request("Blue."), timeout=30).model_version
    while version != "v1" and time.monotonic() < deadline:
        announce_promotion(redis_url, "reward", "v1", "promote")
        time.sleep(0.2)
        version = stub.Score(request("Blue."), timeout=30).model_version
    assert version == "v1"


def test_metrics_count_calls_batches_and_the_serving_version(server):
    _, channel = server
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    before = (
        REGISTRY.get_sample_value("flywheel_reward_calls_total", {"method": "Score", "code": "OK"})
        or 0
    )
    stub.Score(request("Blue.", "Red."), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Score(reward_pb2.ScoreRequest(), timeout=30)
    sample = REGISTRY.get_sample_value
    assert sample("flywheel_reward_calls_total", {"method": "Score", "code": "OK"}) == before + 1
    assert (
        sample("flywheel_reward_calls_total", {"method": "Score", "code": "INVALID_ARGUMENT"}) >= 1
    )
    assert sample("flywheel_reward_batch_size_count") >= 1
    assert sample("flywheel_reward_model_serving", {"version": "v0"}) == 1


def test_calls_without_a_deadline_and_past_their_deadline(server):
    _, channel = server
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    assert len(stub.Score(request("Blue.")).rewards) == 1  # no deadline at all
    with pytest.raises(grpc.RpcError) as late:
        stub.Score(request(*["word " * 50] * 32), timeout=0.001)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_without_a_promoted_rm_it_waits_not_serving_then_follows_the_first_promotion(
    tiny_model_dir, tmp_path, redis_url
):
    """A fresh stack has no reward model: the service stays up, NOT_SERVING, until one is
    promoted, then loads it and reports SERVING."""
    from transformers import AutoTokenizer

    from services.common.registry import ModelRegistry
    from services.rlhf.heads import ScalarHeadModel

    def write_rm(folder):
        ScalarHeadModel.from_pretrained(tiny_model_dir).save_pretrained(folder)
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)

    registry = ModelRegistry(tmp_path / "models")
    settings = RewardSettings(
        FLYWHEEL_MODEL_STORE=registry.root,
        FLYWHEEL_REDIS_URL=redis_url,
        grpc_port=0,
        device="cpu",
        max_tokens=256,
        drain_timeout_s=1,
    )
    server = RewardServer(settings)
    port = server.start()
    channel = internal_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == not_serving
        assert admin.CurrentVersion(admin_pb2.CurrentVersionRequest(), timeout=5).version == ""
        with pytest.raises(grpc.RpcError) as early:
            reward_pb2_grpc.RewardServiceStub(channel).Score(request("Blue."), timeout=5)
        assert early.value.code() == grpc.StatusCode.UNAVAILABLE

        registry.promote("reward", registry.create_version("reward", write_rm).version)
        deadline = time.monotonic() + 20
        status = not_serving
        while status != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            announce_promotion(redis_url, "reward", "v0", "promote")
            time.sleep(0.2)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert admin.CurrentVersion(admin_pb2.CurrentVersionRequest(), timeout=5).version == "v0"
        assert reward_pb2_grpc.RewardServiceStub(channel).Score(request("Blue."), timeout=30)
    finally:
        channel.close()
        server.stop()


def test_score_and_reload_without_the_service_credential_are_refused(server):
    reward_server, _ = server
    target = f"127.0.0.1:{reward_server.grpc.port}"
    with grpc.insecure_channel(target) as channel:
        calls = {
            "Score": lambda: reward_pb2_grpc.RewardServiceStub(channel).Score(
                request("Blue."), timeout=5
            ),
            "Reload": lambda: admin_pb2_grpc.ModelAdminStub(channel).Reload(
                admin_pb2.ReloadRequest(version="v0"), timeout=5
            ),
        }
        assert_refused_without_credential(channel, calls)
