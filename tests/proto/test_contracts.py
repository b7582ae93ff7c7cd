"""The generated stubs work over a real gRPC channel (in-test servicers, no services)."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.generated.flywheel.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    feedback_pb2,
    feedback_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
)

PROMPT = [
    common_pb2.ChatMessage(role="system", content="Be brief."),
    common_pb2.ChatMessage(role="user", content="Name a colour."),
]


class FakeAdmin(admin_pb2_grpc.ModelAdminServicer):
    def __init__(self) -> None:
        self.version = "v0"
        self.promoted = "v1"
        self.loaded_at = Timestamp(seconds=1_700_000_000)

    def Reload(self, request, context):
        wanted = request.version or self.promoted
        if wanted not in ("v0", "v1"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"reward/{wanted} does not exist")
        previous, self.version = self.version, wanted
        return admin_pb2.ReloadResponse(previous_version=previous, current_version=wanted)

    def CurrentVersion(self, request, context):
        return admin_pb2.CurrentVersionResponse(
            role="reward", version=self.version, loaded_at=self.loaded_at
        )


class FakeReward(reward_pb2_grpc.RewardServiceServicer):
    """Reward = answer length minus the number of prompt turns: easy to check."""

    def Score(self, request, context):
        rewards = [len(a) - len(request.prompt) for a in request.answers]
        return reward_pb2.ScoreResponse(rewards=rewards, model_version="v1")

    def ScoreBatch(self, request, context):
        responses = [self.Score(r, context) for r in request.requests]
        return reward_pb2.ScoreBatchResponse(responses=responses, model_version="v1")


class FakeFeedback(feedback_pb2_grpc.FeedbackServiceServicer):
    """Exports ``total`` ranked groups of two candidates each, in pages."""

    total = 5

    def GetInteraction(self, request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, f"no interaction {request.response_id}")

    def ExportComparisons(self, request, context):
        size = request.page_size or 2
        groups = [
            feedback_pb2.ComparisonGroup(
                comparison_id=f"cmp-{i}",
                source=feedback_pb2.FEEDBACK_KIND_RANKING,
                prompt=PROMPT,
                candidates=[
                    feedback_pb2.Candidate(response_id=f"r{i}a", text="Red.", model_version="v0"),
                    feedback_pb2.Candidate(response_id=f"r{i}b", text="Blue!", model_version="v0"),
                ],
                pairs=[feedback_pb2.ComparisonPair(better=1, worse=0)],
            )
            for i in range(self.total)
        ]
        starts = range(0, len(groups), size)
        for index, start in enumerate(starts):
            last = index == len(starts) - 1
            yield feedback_pb2.ComparisonPage(
                snapshot_id="snap-1",
                since=request.since,
                until=Timestamp(seconds=1_700_000_500),
                page_index=index,
                groups=groups[start : start + size],
                last=last,
                total_groups=len(groups) if last else 0,
                total_pairs=len(groups) if last else 0,
            )


@pytest.fixture(scope="module")
def channel():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    admin_pb2_grpc.add_ModelAdminServicer_to_server(FakeAdmin(), server)
    reward_pb2_grpc.add_RewardServiceServicer_to_server(FakeReward(), server)
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(FakeFeedback(), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("flywheel.v1.RewardService", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=5)
        yield ch
    server.stop(grace=None)


def test_messages_round_trip_through_bytes():
    sampling = common_pb2.SamplingParams(temperature=0.7, top_p=0.9, do_sample=True, stop=["\n\n"])
    assert not sampling.HasField("seed")  # "no seed given" is distinguishable from seed 0
    sampling.seed = 0
    interaction = feedback_pb2.Interaction(
        response_id="resp-1",
        messages=PROMPT,
        answer="Red.",
        candidate_group="grp-1",
        candidate_index=0,
        candidate_count=2,
        model_version="v0",
        sampling=sampling,
        created_at=Timestamp(seconds=1_700_000_000),
    )
    copy = feedback_pb2.Interaction.FromString(interaction.SerializeToString())
    assert copy == interaction
    assert copy.sampling.HasField("seed")


def test_score_round_trip(channel):
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    reply = stub.Score(reward_pb2.ScoreRequest(prompt=PROMPT, answers=["Red.", "Blue, mostly."]))
    assert list(reply.rewards) == [2.0, 11.0]
    assert reply.model_version == "v1"


def test_score_batch_keeps_order(channel):
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    requests = [
        reward_pb2.ScoreRequest(prompt=PROMPT[1:], answers=["a", "bb", "ccc"]),
        reward_pb2.ScoreRequest(prompt=PROMPT, answers=["dddd"]),
    ]
    reply = stub.ScoreBatch(reward_pb2.ScoreBatchRequest(requests=requests))
    assert [list(r.rewards) for r in reply.responses] == [[0.0, 1.0, 2.0], [2.0]]
    assert reply.model_version == "v1"


def test_reload_and_current_version(channel):
    stub = admin_pb2_grpc.ModelAdminStub(channel)
    reply = stub.Reload(admin_pb2.ReloadRequest())  # empty version: the promoted one
    assert (reply.previous_version, reply.current_version) == ("v0", "v1")

    current = stub.CurrentVersion(admin_pb2.CurrentVersionRequest())
    assert (current.role, current.version) == ("reward", "v1")
    assert current.loaded_at.ToSeconds() == 1_700_000_000

    with pytest.raises(grpc.RpcError) as err:
        stub.Reload(admin_pb2.ReloadRequest(version="v9"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_export_comparisons_streams_pages(channel):
    stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
    since = Timestamp(seconds=1_699_999_000)
    request = feedback_pb2.ExportComparisonsRequest(since=since, page_size=2)
    pages = list(stub.ExportComparisons(request, timeout=5))

    assert [p.page_index for p in pages] == [0, 1, 2]
    assert [len(p.groups) for p in pages] == [2, 2, 1]
    assert [p.last for p in pages] == [False, False, True]
    assert {p.snapshot_id for p in pages} == {"snap-1"}
    assert all(p.since == since for p in pages)
    assert pages[-1].total_groups == sum(len(p.groups) for p in pages)
    group = pages[0].groups[0]
    assert group.source == feedback_pb2.FEEDBACK_KIND_RANKING
    better = group.candidates[group.pairs[0].better]
    assert better.text == "Blue!"


def test_errors_arrive_as_status_codes(channel):
    stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetInteraction(feedback_pb2.GetInteractionRequest(response_id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.value.details()


def test_standard_health_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service="flywheel.v1.RewardService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
