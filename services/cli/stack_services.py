"""The local stack's services: how each one starts, where it listens, how it says "ready".

Ports and addresses come from each service's own settings class, so the environment that
configures a service (``FLYWHEEL_ENGINE_HTTP_PORT=18080``) also tells ``flywheel up`` where
to probe it. Only the settings modules are imported here, never a service itself: the CLI
stays quick and does not load torch.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.generated.flywheel.v1 import admin_pb2, admin_pb2_grpc
from services.common.registry import ModelRegistry
from services.common.service_auth import service_channel
from services.common.settings import ServiceSettings
from services.feedback.settings import FeedbackSettings
from services.inference.engine.settings import EngineSettings
from services.inference.gateway.settings import GatewaySettings
from services.reward.settings import RewardSettings
from services.trainer.settings import TrainerSettings

# Start order; ``down`` goes the other way. Redis comes first and is handled apart.
SERVICE_NAMES = (
    "feedback",
    "reward",
    "engine",
    "gateway",
    "trainer-control",
    "trainer-train",
    "trainer-beat",
)

# Readiness, as one word for the table. READY and WAITING_FOR_RM both mean "started as it
# should": a fresh stack has no reward model until the trainer makes one.
READY = "ready"
WAITING_FOR_RM = "waiting for a reward model"
NOT_READY = "not ready"
NO_ANSWER = "no answer"
SETTLED = frozenset({READY, WAITING_FOR_RM})

_PROBE_TIMEOUT_S = 2.0

T = TypeVar("T")


class StackSettings(ServiceSettings):
    """Settings of ``flywheel up|down|status`` (environment prefix ``FLYWHEEL_STACK_``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_STACK_", extra="ignore")

    ready_timeout_s: float = Field(
        180.0,
        gt=0,
        description="How long `up` waits for each service to become ready (a model loads on "
        "a slow CPU in well under a minute; the first start of a process also imports torch).",
    )
    redis_server: str = Field("redis-server", description="The Redis binary `up` may start.")
    redis_stop_timeout_s: float = Field(
        10.0, gt=0, description="How long `down` lets Redis write its AOF before SIGKILL."
    )


def local_host(host: str) -> str:
    """The address to probe a server on: a wildcard bind answers on loopback."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def http_get(url: str) -> tuple[int, bytes] | None:
    """(status, body) of a GET; None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None


def http_ready(url: str) -> str:
    answer = http_get(url)
    if answer is None:
        return NO_ANSWER
    return READY if answer[0] == 200 else NOT_READY


def grpc_health(target: str) -> int | None:
    """The overall gRPC health status (``health_pb2.HealthCheckResponse``), None if no answer."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = _answer(
            lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=_PROBE_TIMEOUT_S)
        )
    return None if reply is None else reply.status


def grpc_current_version(target: str, service_token: str) -> str | None:
    """ModelAdmin.CurrentVersion: the version serving ("" if none is loaded), None if no
    answer."""
    with service_channel(target, service_token) as channel:
        stub = admin_pb2_grpc.ModelAdminStub(channel)
        request = admin_pb2.CurrentVersionRequest()
        reply = _answer(lambda: stub.CurrentVersion(request, timeout=_PROBE_TIMEOUT_S))
    return None if reply is None else reply.version


def _answer(call: Callable[[], T]) -> T | None:
    """A probe's reply, or None when the call fails (the server is down, slow or refuses)."""
    try:
        return call()
    except grpc.RpcError:
        return None


@dataclass(frozen=True)
class ServiceSpec:
    """How to run and observe one service of the stack."""

    name: str
    module: str
    """Run as ``python -m <module> <args>``."""
    ports: dict[str, int]
    """Setting name (``http_port``) -> port; the error for a taken port names the variable."""
    address: str
    """The main endpoint, as the table shows it."""
    drain_timeout_s: float
    readiness: Callable[[], str]
    version: Callable[[], str | None] = lambda: None
    depends_on: tuple[str, ...] = ()
    """Services that must be ready before this one starts (when this `up` starts them)."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables this service needs on top of the shared environment (unless already set)."""
    args: tuple[str, ...] = ()
    settings_prefix: str = ""
    """Its settings' environment prefix, when not the service's name (the trainer's three
    processes share ``FLYWHEEL_TRAINER_``)."""

    def port_variable(self, setting: str) -> str:
        prefix = self.settings_prefix or self.name.upper()
        return f"FLYWHEEL_{prefix}_{setting.upper()}"


def _feedback(settings: FeedbackSettings, gateway: GatewaySettings) -> ServiceSpec:
    base = f"http://{local_host(settings.http_host)}:{settings.http_port}"
    # The chat page the gateway serves sends votes here from the browser: admit its origin.
    page_origins = [
        f"http://{host}:{gateway.http_port}"
        for host in dict.fromkeys((local_host(gateway.http_host), "127.0.0.1", "localhost"))
    ]
    return ServiceSpec(
        name="feedback",
        module="services.feedback",
        ports={"http_port": settings.http_port, "grpc_port": settings.grpc_port},
        address=f"{base} (gRPC {settings.grpc_port})",
        drain_timeout_s=settings.drain_timeout_s,
        readiness=lambda: http_ready(f"{base}/readyz"),
        env={"FLYWHEEL_FEEDBACK_CORS_ORIGINS": json.dumps(page_origins)},
    )


def _reward(settings: RewardSettings) -> ServiceSpec:
    target = f"127.0.0.1:{settings.grpc_port}"
    registry = ModelRegistry(settings.model_store_dir)

    def readiness() -> str:
        status = grpc_health(target)
        if status is None:
            return NO_ANSWER
        if status == health_pb2.HealthCheckResponse.SERVING:
            return READY
        # NOT_SERVING is right, not a failure, while there is no reward model to load.
        return WAITING_FOR_RM if registry.promoted("reward") is None else NOT_READY

    return ServiceSpec(
        name="reward",
        module="services.reward",
        ports={"grpc_port": settings.grpc_port, "metrics_port": settings.metrics_port},
        address=f"{target} (metrics {settings.metrics_port})",
        drain_timeout_s=settings.drain_timeout_s,
        readiness=readiness,
        version=lambda: grpc_current_version(target, settings.resolved_service_token()) or None,
    )


def _engine(settings: EngineSettings) -> ServiceSpec:
    base = f"http://{local_host(settings.http_host)}:{settings.http_port}"

    def version() -> str | None:
        answer = http_get(f"{base}/info")
        if answer is None or answer[0] != 200:
            return None
        try:
            return json.loads(answer[1]).get("model_version")
        except ValueError:
            return None

    return ServiceSpec(
        name="engine",
        module="services.inference.engine",
        ports={"http_port": settings.http_port, "admin_grpc_port": settings.admin_grpc_port},
        address=f"{base} (admin gRPC {settings.admin_grpc_port})",
        drain_timeout_s=settings.drain_timeout_s,
        readiness=lambda: http_ready(f"{base}/health"),
        version=version,
    )


def _gateway(
    settings: GatewaySettings,
    engine: EngineSettings,
    feedback: FeedbackSettings,
    reward: RewardSettings,
) -> ServiceSpec:
    base = f"http://{local_host(settings.http_host)}:{settings.http_port}"
    return ServiceSpec(
        name="gateway",
        module="services.inference.gateway",
        ports={"http_port": settings.http_port},
        address=base,
        drain_timeout_s=settings.drain_timeout_s,
        readiness=lambda: http_ready(f"{base}/readyz"),
        depends_on=("feedback", "reward", "engine"),
        # The gateway's defaults name the default ports; a stack started with other ports
        # (tests, a second stack) must point it at the services this `up` runs.
        env={
            "FLYWHEEL_GATEWAY_ENGINE_URL": (
                f"http://{local_host(engine.http_host)}:{engine.http_port}"
            ),
            "FLYWHEEL_GATEWAY_FEEDBACK_GRPC_TARGET": f"127.0.0.1:{feedback.grpc_port}",
            "FLYWHEEL_GATEWAY_REWARD_GRPC_TARGET": f"127.0.0.1:{reward.grpc_port}",
            "FLYWHEEL_GATEWAY_FEEDBACK_PUBLIC_URL": (
                f"http://{local_host(feedback.http_host)}:{feedback.http_port}"
            ),
        },
    )


def _trainer(settings: TrainerSettings, feedback: FeedbackSettings) -> list[ServiceSpec]:
    """The trainer's two Celery workers and beat; each says "ready" once its /metrics
    answers (served from the start of the process, before it takes tasks)."""
    env = {"FLYWHEEL_TRAINER_FEEDBACK_GRPC_TARGET": f"127.0.0.1:{feedback.grpc_port}"}
    host = local_host(settings.metrics_host)

    def spec(role: str, args: tuple[str, ...], port_setting: str, port: int, depends_on):
        url = f"http://{host}:{port}/metrics"
        return ServiceSpec(
            name=f"trainer-{role}",
            module="services.trainer",
            args=args,
            ports={port_setting: port},
            address=f"{url} (queue {args[-1]})" if args[0] == "worker" else url,
            drain_timeout_s=20.0,
            readiness=lambda: http_ready(url),
            depends_on=depends_on,
            env=env,
            settings_prefix="TRAINER",
        )

    return [
        spec(
            "control",
            ("worker", "control"),
            "control_metrics_port",
            settings.control_metrics_port,
            ("feedback",),
        ),
        spec(
            "train",
            ("worker", "train"),
            "train_metrics_port",
            settings.train_metrics_port,
            ("feedback", "trainer-control"),
        ),
        spec(
            "beat", ("beat",), "beat_metrics_port", settings.beat_metrics_port, ("trainer-control",)
        ),
    ]


def build_services(data_dir: Path) -> dict[str, ServiceSpec]:
    """Every service, in start order, configured from the environment and ``data_dir``."""
    feedback = FeedbackSettings(data_dir=data_dir)
    reward = RewardSettings(data_dir=data_dir)
    engine = EngineSettings(data_dir=data_dir)
    gateway = GatewaySettings(data_dir=data_dir)
    trainer = TrainerSettings(data_dir=data_dir)
    specs = [
        _feedback(feedback, gateway),
        _reward(reward),
        _engine(engine),
        _gateway(gateway, engine, feedback, reward),
        *_trainer(trainer, feedback),
    ]
    return {spec.name: spec for spec in specs}
