"""Helpers for the feedback tests: serve answers the way the gateway records them, and run the
service as a separate process (for the crash and outage tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import httpx
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.credentials import api_key_id, new_api_key, new_feedback_token
from services.common.generated.flywheel.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc
from tests.harness import free_port, internal_channel

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServedGroup:
    """The answers of one request, as a client holds them."""

    api_key: str
    response_ids: list[str]
    feedback_token: str
    candidate_group: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def serve_group(
    stub: feedback_pb2_grpc.FeedbackServiceStub,
    *,
    api_key: str | None = None,
    n: int = 3,
    model_version: str = "v0",
    created_at: datetime | None = None,
    prompt: str = "Name a colour.",
    record: int | None = None,
    answers: list[str] | None = None,
) -> ServedGroup:
    """Record ``n`` answers to one prompt (only the first ``record`` of them, if given);
    ``answers`` gives their texts (and then their number)."""
    if answers is not None:
        n = len(answers)
    api_key = api_key or new_api_key()
    token = new_feedback_token()
    group = f"grp_{uuid.uuid4().hex}"
    ids = [f"resp_{uuid.uuid4().hex}" for _ in range(n)]
    stamp = None
    if created_at is not None:
        stamp = Timestamp()
        stamp.FromDatetime(created_at)
    for index, response_id in enumerate(ids[: record if record is not None else n]):
        stub.RecordInteraction(
            feedback_pb2.RecordInteractionRequest(
                interaction=feedback_pb2.Interaction(
                    response_id=response_id,
                    conversation_id=f"conv_{group}",
                    messages=[common_pb2.ChatMessage(role="user", content=prompt)],
                    answer=answers[index] if answers else f"answer {index} to {prompt}",
                    candidate_group=group,
                    candidate_index=index,
                    candidate_count=n,
                    model_version=model_version,
                    sampling=common_pb2.SamplingParams(temperature=0.7, top_p=0.9, do_sample=True),
                    api_key_id=api_key_id(api_key),
                    feedback_token=token,
                    created_at=stamp,
                )
            ),
            timeout=10,
        )
    return ServedGroup(api_key, ids, token, group)


class ServiceProcess:
    """``python -m services.feedback`` as a child process on free ports."""

    def __init__(self, data_dir: Path, redis_url: str, database_url: str | None = None) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "FLYWHEEL_DATA_DIR": str(data_dir),
            "FLYWHEEL_REDIS_URL": redis_url,
            "FLYWHEEL_FEEDBACK_HTTP_HOST": "127.0.0.1",
            "FLYWHEEL_FEEDBACK_HTTP_PORT": str(self.http_port),
            "FLYWHEEL_FEEDBACK_GRPC_PORT": str(self.grpc_port),
            "FLYWHEEL_LOG_FORMAT": "text",
        }
        if database_url:
            self.env["FLYWHEEL_FEEDBACK_DATABASE_URL"] = database_url
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir / "feedback.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.feedback"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"feedback service exited; see {self.log_path}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"feedback service not ready in {timeout} s; see {self.log_path}")

    def channel(self) -> grpc.Channel:
        return internal_channel(f"127.0.0.1:{self.grpc_port}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait for the graceful exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def stream_fields(event: dict) -> dict[str, str]:
    """What the outbox relay puts on the events stream for ``event`` (the API's view of it)."""
    comparison = event["comparison"] or {"comparison_id": "", "pairs": 0}
    return {
        "event_id": event["id"],
        "kind": event["kind"],
        "rater_key_id": event["rater_key_id"],
        "candidate_group": event["candidate_group"],
        "replaces": event["replaces"] or "",
        "comparison_id": comparison["comparison_id"],
        "pairs": str(comparison["pairs"]),
        "recorded_at": event["recorded_at"],
    }
