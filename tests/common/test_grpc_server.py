"""The gRPC bootstrap against real gRPC on 127.0.0.1: health, reflection, signal-driven drain.

The drain tests run this file as a script in a subprocess (``python test_grpc_server.py
DRAIN_S``), because SIGTERM handling needs a process of its own with the server in its main
thread. The test service is hand-built with raw bytes, so no generated stubs are needed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from services.common.grpc_server import GrpcServer
from services.common.runtime import Part, ServiceProcess
from tests.harness import SERVICE_TOKEN, internal_channel

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE = "test.Slow"
HealthStatus = health_pb2.HealthCheckResponse


def slow_service(announce: bool = False) -> grpc.ServiceRpcHandler:
    """``test.Slow/Sleep``: the request is a number of seconds as ASCII; answers b"slept"."""

    def sleep(request: bytes, context: grpc.ServicerContext) -> bytes:
        if announce:  # tells the test process that the call is in flight
            print("started", flush=True)
        deadline = time.monotonic() + float(request)
        # Sleep in slices and honour cancellation, as real handlers should, so a cancelled
        # call frees its thread (and lets the process exit) at once.
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.02)
        return b"slept"

    return grpc.method_handlers_generic_handler(
        SERVICE, {"Sleep": grpc.unary_unary_rpc_method_handler(sleep)}
    )


def call_sleep(port: int, seconds: float) -> bytes:
    with internal_channel(f"127.0.0.1:{port}") as channel:
        return channel.unary_unary(f"/{SERVICE}/Sleep")(str(seconds).encode(), timeout=30)


def health_status(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status


@pytest.fixture
def server() -> Iterator[GrpcServer]:
    server = GrpcServer("127.0.0.1", 0, service_token=SERVICE_TOKEN, max_workers=4)
    server.add_generic_handler(slow_service())
    server.start()
    yield server
    server.stop(drain_timeout=0)


@pytest.mark.timeout(30)
def test_health_follows_set_serving(server: GrpcServer) -> None:
    assert server.port > 0
    for name in ("", SERVICE):
        assert health_status(server.port, name) == HealthStatus.NOT_SERVING
    server.set_serving(True)
    for name in ("", SERVICE):
        assert health_status(server.port, name) == HealthStatus.SERVING
    server.set_serving(False)
    assert health_status(server.port, SERVICE) == HealthStatus.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        health_status(server.port, "no.Such")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.timeout(30)
def test_reflection_lists_services(server: GrpcServer) -> None:
    with internal_channel(f"127.0.0.1:{server.port}") as channel:
        names = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    assert "grpc.reflection.v1alpha.ServerReflection" in names


@pytest.mark.timeout(30)
def test_add_after_start_and_port_clash_fail(server: GrpcServer) -> None:
    with pytest.raises(RuntimeError):
        server.add_generic_handler(slow_service())
    # SO_REUSEPORT is off, so a second server on the same port must not start silently.
    with pytest.raises(RuntimeError):
        GrpcServer("127.0.0.1", server.port, service_token=SERVICE_TOKEN).start()
    assert call_sleep(server.port, 0) == b"slept"


def start_server_process(drain_timeout: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, str(drain_timeout)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"server did not start: {line!r} {proc.stderr.read()}"
    return proc, int(line)


def in_background(fn, *args) -> tuple[threading.Thread, dict]:
    """Run ``fn(*args)`` in a thread; the dict gets "result" or "error"."""
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = fn(*args)
        except grpc.RpcError as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def draining(port: int) -> bool:
    """True once health says NOT_SERVING or the server refuses new calls."""
    try:
        return health_status(port) == HealthStatus.NOT_SERVING
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.timeout(30)
def test_sigterm_drains_in_flight_calls() -> None:
    proc, port = start_server_process(drain_timeout=5)
    try:
        assert health_status(port) == HealthStatus.SERVING
        call, out = in_background(call_sleep, port, 1.5)
        assert proc.stdout.readline().strip() == "started"
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1
        while not draining(port):
            assert time.monotonic() < deadline, "still serving after SIGTERM"
            time.sleep(0.05)
        assert call.is_alive(), "the drain should be visible while the call is in flight"
        call.join(timeout=5)
        assert out == {"result": b"slept"}
        assert proc.wait(timeout=3) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(30)
def test_drain_timeout_cancels_long_calls() -> None:
    proc, port = start_server_process(drain_timeout=0.5)
    try:
        call, out = in_background(call_sleep, port, 20)
        assert proc.stdout.readline().strip() == "started"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        # The drain gave up on the 20 s call: 0.5 s of drain plus the process's own exit,
        # with room for a machine several times slower than ours, far below the call's 20 s.
        assert time.monotonic() - sent < 10
        call.join(timeout=5)
        assert out["error"].code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":  # the subprocess side of the drain tests
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    grpc_server = GrpcServer(
        "127.0.0.1", 0, service_token=os.environ["FLYWHEEL_SERVICE_TOKEN"], max_workers=4
    )
    grpc_server.add_generic_handler(slow_service(announce=True))
    drain_timeout = float(sys.argv[1])

    def ready() -> None:
        grpc_server.set_serving(True)
        print(grpc_server.port, flush=True)

    ServiceProcess(
        "drain test",
        [
            Part("grpc", grpc_server.start, lambda: grpc_server.stop(drain_timeout)),
            Part("ready", ready),
        ],
    ).serve_until_signal(poll_s=0.05)
