"""Nothing listens beyond loopback unless told to: the local stack's services, run with their
default settings, bind 127.0.0.1 only (a pod sets 0.0.0.0 explicitly)."""

from __future__ import annotations

import ipaddress
import os

import psutil
import pytest

from services.feedback.server import FeedbackServer
from services.feedback.settings import FeedbackSettings
from services.inference.engine.settings import EngineSettings
from services.inference.gateway.settings import GatewaySettings
from services.reward.settings import RewardSettings


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.parametrize(
    ("settings", "hosts"),
    [
        (FeedbackSettings, ("http_host", "grpc_host")),
        (RewardSettings, ("grpc_host", "metrics_host")),
        (EngineSettings, ("http_host", "admin_grpc_host")),
        (GatewaySettings, ("http_host",)),
    ],
)
def test_every_listening_address_defaults_to_loopback(settings, hosts, monkeypatch):
    for name in list(os.environ):
        if name.endswith("_HOST") and name.startswith("FLYWHEEL_"):
            monkeypatch.delenv(name)
    defaults = settings()
    assert {host: getattr(defaults, host) for host in hosts} == dict.fromkeys(hosts, "127.0.0.1")


def test_the_feedback_service_listens_on_loopback_only(tmp_path, redis_url):
    settings = FeedbackSettings(
        FLYWHEEL_DATA_DIR=tmp_path, FLYWHEEL_REDIS_URL=redis_url, http_port=0, grpc_port=0
    )
    server = FeedbackServer(settings)
    server.start()
    try:
        ports = {server.http_port, server.grpc_port}
        listening = [
            c.laddr
            for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
        ]
        assert {address.port for address in listening} == ports
        # gRPC listens on a dual-stack socket: 127.0.0.1 shows as ::ffff:127.0.0.1 there.
        assert all(_loopback(address.ip) for address in listening), listening
    finally:
        server.stop()
