"""What every test module shares: free ports, waiting for a condition, and the suite's
service credential (the one internal gRPC calls present)."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.service_auth import service_channel

# Every server of the suite, in-process or a child process, shares one service credential, as
# the pods of one release share one Secret (services/common/service_auth.py). A child process
# that imports this module keeps the token it inherited.
SERVICE_TOKEN = os.environ.setdefault("FLYWHEEL_SERVICE_TOKEN", "fws_test-" + secrets.token_hex(8))


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
