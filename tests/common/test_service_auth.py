"""The service credential: where the token comes from, and a server that refuses calls
without it (health checks aside), on a real gRPC server on loopback."""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import GrpcServer
from services.common.service_auth import resolve_service_token, service_channel

SERVICE = "test.Echo"
TOKEN = "fws_right"


def echo_service() -> grpc.GenericRpcHandler:
    def echo(request: bytes, _context) -> bytes:
        return request

    def repeat(request: bytes, _context) -> Iterator[bytes]:
        yield request
        yield request

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Repeat": grpc.unary_stream_rpc_method_handler(repeat),
        },
    )


@pytest.fixture
def server() -> Iterator[GrpcServer]:
    server = GrpcServer("127.0.0.1", 0, service_token=TOKEN, max_workers=4)
    server.add_generic_handler(echo_service())
    server.start()
    server.set_serving(True)
    yield server
    server.stop(drain_timeout=0)


def calls(channel: grpc.Channel) -> tuple:
    echo = channel.unary_unary(f"/{SERVICE}/Echo")
    repeat = channel.unary_stream(f"/{SERVICE}/Repeat")
    return echo, repeat


@pytest.mark.parametrize("token", [None, "fws_wrong", TOKEN + "x", ""])
def test_calls_without_the_right_token_are_refused(server, token):
    target = f"127.0.0.1:{server.port}"
    channel = grpc.insecure_channel(target) if token is None else service_channel(target, token)
    with channel:
        echo, repeat = calls(channel)
        for call in (lambda: echo(b"hi", timeout=5), lambda: list(repeat(b"hi", timeout=5))):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "service credential" in refused.value.details()


def test_calls_with_the_token_pass_and_health_needs_none(server):
    target = f"127.0.0.1:{server.port}"
    with service_channel(target, TOKEN) as channel:
        echo, repeat = calls(channel)
        assert echo(b"hi", timeout=5) == b"hi"
        assert list(repeat(b"ho", timeout=5)) == [b"ho", b"ho"]
    with grpc.insecure_channel(target) as channel:  # probes cannot send metadata
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_token_file_is_made_private_once_and_shared(tmp_path):
    path = tmp_path / "deeper" / "service-token"
    tokens: list[str] = []
    threads = [
        threading.Thread(target=lambda: tokens.append(resolve_service_token(None, path)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(tokens)) == 1 and tokens[0].startswith("fws_")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["service-token"]  # no drafts left
    assert resolve_service_token(None, path) == tokens[0]
    assert resolve_service_token("fws_from_env", path) == "fws_from_env"


def test_an_empty_token_file_is_an_error_not_an_open_door(tmp_path):
    path = tmp_path / "service-token"
    path.write_text("\n")
    with pytest.raises(RuntimeError, match="empty"):
        resolve_service_token(None, path)
    with pytest.raises(ValueError):
        GrpcServer("127.0.0.1", 0, service_token="")
