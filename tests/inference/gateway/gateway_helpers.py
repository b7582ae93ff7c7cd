"""Helpers for the gateway tests: the feedback service in-process, served answers as the gateway
records them."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc

from services.common.credentials import api_key_id, new_api_key, new_feedback_token
from services.common.generated.flywheel.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc
from services.feedback.server import FeedbackServer
from services.feedback.settings import FeedbackSettings
from tests.harness import internal_channel


class FeedbackHarness:
    """The feedback service (gRPC + HTTP + writer) on loopback; ``stop`` and ``start`` again
    keep the database and the gRPC port, as a restarted pod behind one Service would."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.settings = FeedbackSettings(
            database_url=f"sqlite:///{tmp_path / 'feedback.sqlite3'}",
            FLYWHEEL_REDIS_URL=redis_url,
            FLYWHEEL_DATA_DIR=tmp_path,
            http_host="127.0.0.1",
            http_port=0,
            grpc_port=0,
            drain_timeout_s=0.5,
            revocation_refresh_s=0.2,
        )
        self.server: FeedbackServer | None = None
        self.port = 0
        self._channel: grpc.Channel | None = None
        self.stub: feedback_pb2_grpc.FeedbackServiceStub | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        settings = self.settings.model_copy(update={"grpc_port": self.port})
        self.server = FeedbackServer(settings)
        self.server.start()
        self.port = self.server.grpc_port
        self._channel = internal_channel(self.target)
        self.stub = feedback_pb2_grpc.FeedbackServiceStub(self._channel)

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def get(self, response_id: str) -> feedback_pb2.Interaction:
        request = feedback_pb2.GetInteractionRequest(response_id=response_id)
        return self.stub.GetInteraction(request, timeout=5).interaction

    def interaction_count(self) -> int:
        return self.stub.Stats(feedback_pb2.StatsRequest(), timeout=5).interactions


def make_interaction(
    response_id: str | None = None, *, answer: str = "Blue.", **fields
) -> feedback_pb2.Interaction:
    """A served answer as the gateway records it (n = 1, its own candidate group)."""
    response_id = response_id or f"resp_{uuid.uuid4().hex}"
    values = dict(
        response_id=response_id,
        conversation_id=f"conv_{response_id}",
        messages=[common_pb2.ChatMessage(role="user", content="Name a colour.")],
        answer=answer,
        candidate_group=f"grp_{response_id}",
        candidate_index=0,
        candidate_count=1,
        model_version="v0",
        sampling=common_pb2.SamplingParams(temperature=0.7, top_p=0.9, do_sample=True),
        api_key_id=api_key_id(new_api_key()),
        feedback_token=new_feedback_token(),
    )
    values.update(fields)
    return feedback_pb2.Interaction(**values)
