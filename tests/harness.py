"""What every test module shares: free ports, waiting for a condition, the suite's service
credential (the one internal gRPC calls present), the feedback service run in-process, and
tiny models for the registry."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
import redis
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from transformers import AutoTokenizer

from services.common.base_model import tiny_llama_config  # noqa: F401  (re-exported)
from services.common.generated.flywheel.v1 import feedback_pb2, feedback_pb2_grpc
from services.common.registry import ModelRegistry
from services.common.service_auth import service_channel
from services.feedback.server import FeedbackServer
from services.feedback.settings import FeedbackSettings

# Every server of the suite, in-process or a child process, shares one service credential, as
# the pods of one release share one Secret (services/common/service_auth.py). A child process
# that imports this module keeps the token it inherited.
SERVICE_TOKEN = os.environ.setdefault("FLYWHEEL_SERVICE_TOKEN", "fws_test-" + secrets.token_hex(8))


# Every port setting of `flywheel up`'s services: a test stack moves them all to free ports.
STACK_PORT_VARIABLES = [
    "FLYWHEEL_FEEDBACK_HTTP_PORT",
    "FLYWHEEL_FEEDBACK_GRPC_PORT",
    "FLYWHEEL_REWARD_GRPC_PORT",
    "FLYWHEEL_REWARD_METRICS_PORT",
    "FLYWHEEL_ENGINE_HTTP_PORT",
    "FLYWHEEL_ENGINE_ADMIN_GRPC_PORT",
    "FLYWHEEL_GATEWAY_HTTP_PORT",
    "FLYWHEEL_TRAINER_CONTROL_METRICS_PORT",
    "FLYWHEEL_TRAINER_TRAIN_METRICS_PORT",
    "FLYWHEEL_TRAINER_BEAT_METRICS_PORT",
]


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on (held open together, so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)


# Each pytest-xdist worker has 16 Redis databases of its own (tools/test-services.sh starts the
# test Redis with 64, so up to four workers), so one area's number in two workers never meets.
REDIS_DATABASES_PER_WORKER = 16


def redis_db_url(redis_url: str, db: int) -> str:
    """The URL of this worker's database ``db`` (0-15) of the test Redis."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    return redis_url.rsplit("/", 1)[0] + f"/{db + REDIS_DATABASES_PER_WORKER * worker}"


def empty_redis_db(redis_url: str, db: int) -> str:
    """The URL of this worker's database ``db`` of the test Redis, emptied first. Each area of
    the suite has a database of its own (feedback 3, gateway and stack 5, trainer and the keys
    CLI 7, the stack test 9, the demo 10, the deployment observability test 12), so one area's
    keys never meet another's."""
    url = redis_db_url(redis_url, db)
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def internal_channel(target: str) -> grpc.Channel:
    """A channel to an internal gRPC API, presenting the suite's service credential."""
    return service_channel(target, SERVICE_TOKEN)


def assert_refused_without_credential(channel: grpc.Channel, calls: dict) -> None:
    """Each of ``calls`` (name -> call on ``channel``) is UNAUTHENTICATED, while gRPC health,
    which probes use without metadata, still answers SERVING."""
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def feedback_settings(
    database_url: str, redis_url: str, data_dir: Path, **overrides
) -> FeedbackSettings:
    """Settings for an in-process feedback service on loopback ports chosen by the OS."""
    values = dict(
        database_url=database_url,
        FLYWHEEL_REDIS_URL=redis_url,
        FLYWHEEL_DATA_DIR=data_dir,
        http_host="127.0.0.1",
        http_port=0,
        grpc_port=0,
        drain_timeout_s=1,
    )
    return FeedbackSettings(**{**values, **overrides})


class FeedbackService:
    """The feedback service (HTTP + gRPC + writer + outbox relay) in-process on loopback, with
    clients for both front ends and for its Redis. ``stop`` then ``start`` again keeps the
    database and both ports, as a restarted pod behind one Service would."""

    def __init__(self, settings: FeedbackSettings) -> None:
        self.settings = settings
        self.server: FeedbackServer | None = None
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self._ports = {"http_port": settings.http_port, "grpc_port": settings.grpc_port}
        self._channel: grpc.Channel | None = None
        self.http: httpx.Client | None = None
        self.stub: feedback_pb2_grpc.FeedbackServiceStub | None = None

    @classmethod
    def on_sqlite(cls, data_dir: Path, redis_url: str, **overrides) -> FeedbackService:
        """A service whose store is a SQLite file in ``data_dir`` (created), not started."""
        data_dir.mkdir(parents=True, exist_ok=True)
        database = f"sqlite:///{data_dir / 'feedback.sqlite3'}"
        return cls(feedback_settings(database, redis_url, data_dir, **overrides))

    def start(self) -> FeedbackService:
        self.server = FeedbackServer(self.settings.model_copy(update=self._ports))
        self.server.start()
        self._ports = {"http_port": self.server.http_port, "grpc_port": self.server.grpc_port}
        self._channel = internal_channel(self.target)
        self.stub = feedback_pb2_grpc.FeedbackServiceStub(self._channel)
        self.http = httpx.Client(base_url=self.http_url, timeout=10)
        return self

    def stop(self) -> None:
        for client in (self.http, self._channel):
            if client is not None:
                client.close()
        self.http = self._channel = self.stub = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self) -> None:
        self.stop()
        self.redis.close()

    @property
    def core(self):
        return self.server.core

    @property
    def target(self) -> str:
        """The gRPC address."""
        return f"127.0.0.1:{self._ports['grpc_port']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['http_port']}"

    def get(self, response_id: str) -> feedback_pb2.Interaction:
        request = feedback_pb2.GetInteractionRequest(response_id=response_id)
        return self.stub.GetInteraction(request, timeout=5).interaction

    def interaction_count(self) -> int:
        return self.stub.Stats(feedback_pb2.StatsRequest(), timeout=5).interactions


# Built once a session for each (tiny model folder, head seed) and copied into every registry
# that asks: a copy takes milliseconds, a build a few tenths.
@functools.cache
def _tiny_reward_model_folder(tiny_model_dir: Path, seed: int) -> Path:
    from services.rlhf.heads import ScalarHeadModel

    torch.manual_seed(seed)
    rm = ScalarHeadModel.from_pretrained(tiny_model_dir)
    folder = Path(tempfile.mkdtemp(prefix=f"tiny-rm-seed{seed}-", dir=tiny_model_dir.parent))
    rm.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def add_tiny_reward_model(
    registry: ModelRegistry, tiny_model_dir: Path, seed: int = 0, promote: bool = False
) -> str:
    """A tiny reward model (the tiny Llama with a scalar head seeded by ``seed``) as a new
    reward version of ``registry``; its version name."""
    saved = _tiny_reward_model_folder(tiny_model_dir, seed)
    version = registry.create_version(
        "reward",
        lambda folder: shutil.copytree(saved, folder, dirs_exist_ok=True),
        notes=f"tiny RM, head seed {seed}",
    ).version
    if promote:
        registry.promote("reward", version)
    return version
