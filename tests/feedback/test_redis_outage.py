"""Redis outage: the service keeps accepting feedback while Redis is down (also across a
restart of the service), and the outbox delivers every event, exactly once and in order, once
Redis is back.

The service runs as its own process (``python -m services.feedback``, with its default SQLite
store) against a Redis of this test's own, so stopping that Redis disturbs no other test. Redis
keeps an append-only file (fsynced on every write), so what was on the stream before the
outage is still there after the restart.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.common.credentials import new_api_key
from services.common.generated.flywheel.v1 import feedback_pb2, feedback_pb2_grpc
from services.common.redis_names import FEEDBACK_EVENTS_STREAM, feedback_delivered_key
from tests.feedback.feedback_helpers import (
    ServedGroup,
    ServiceProcess,
    serve_group,
    stream_fields,
)
from tests.harness import free_port

BEFORE = 10  # events posted (and delivered) before the outage
DURING = 30  # events posted while Redis is down
AFTER_RESTART = 10  # ... and after the service restarted, Redis still down


class RedisServer:
    """A private ``redis-server`` on a free port, with an fsynced append-only file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart: same port, same files) and wait until it answers."""
        self.folder.mkdir(exist_ok=True)
        options = {
            "bind": "127.0.0.1",
            "port": self.port,
            "dir": self.folder,
            "save": "",
            "appendonly": "yes",
            "appendfsync": "always",
            "daemonize": "no",
            "logfile": self.folder / "redis.log",
        }
        self.process = subprocess.Popen(
            ["redis-server", *(a for k, v in options.items() for a in (f"--{k}", str(v)))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self.process.poll() is None, f"redis-server exited; see {self.folder}"
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                    pass  # not listening yet, or still reading its append-only file
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def service(tmp_path, private_redis) -> Iterator[ServiceProcess]:
    """The service with its default store: SQLite under FLYWHEEL_DATA_DIR."""
    (tmp_path / "data").mkdir()
    process = ServiceProcess(tmp_path / "data", private_redis.url)
    process.start()
    try:
        yield process
    finally:
        process.kill()


def _bodies(group: ServedGroup) -> list[dict]:
    """Five different votes on one group's answers."""
    a, b, c = group.response_ids
    return [
        {"kind": "thumb", "response_id": a, "value": 1},
        {"kind": "thumb", "response_id": b, "value": -1},
        {"kind": "pairwise", "response_a": a, "response_b": c, "outcome": "b"},
        {"kind": "ranking", "ranking": [[c], [a, b]]},
        {"kind": "thumb", "response_id": a, "value": -1},  # replaces the first thumb
    ]


def _post_all(http: httpx.Client, groups: list[ServedGroup]) -> list[tuple[dict, float]]:
    """Post the votes of ``groups`` one after the other: [(stored event, seconds taken)]."""
    accepted = []
    for group in groups:
        for body in _bodies(group):
            started = time.perf_counter()
            response = http.post("/v1/feedback", json=body, headers=group.auth)
            took = time.perf_counter() - started
            assert response.status_code == 201, response.text
            accepted.append((response.json(), took))
    return accepted


def _backlog(service: ServiceProcess) -> int:
    with service.channel() as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        request = feedback_pb2.StatsRequest()
        return stub.Stats(request, timeout=10, wait_for_ready=True).outbox_backlog


def _wait_for_backlog(service: ServiceProcess, want: int, timeout: float) -> float:
    """Seconds until the outbox holds ``want`` events."""
    started = time.monotonic()
    while (backlog := _backlog(service)) != want:
        assert time.monotonic() - started < timeout, f"outbox holds {backlog}, not {want}"
        time.sleep(0.05)
    return time.monotonic() - started


def _serve(service: ServiceProcess, api_key: str, groups: int) -> list[ServedGroup]:
    with service.channel() as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        return [serve_group(stub, api_key=api_key) for _ in range(groups)]


def _metric(http: httpx.Client, name: str) -> float | None:
    match = re.search(rf"^{name} (\S+)$", http.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _wait_for_backlog_gauge(http: httpx.Client, want: int, timeout: float = 10.0) -> None:
    """/metrics reads the backlog from the store when scraped, cached for up to 5 s."""
    deadline = time.monotonic() + timeout
    while (value := _metric(http, "flywheel_feedback_outbox_backlog")) != want:
        assert time.monotonic() < deadline, f"flywheel_feedback_outbox_backlog is {value}"
        time.sleep(0.2)


def test_feedback_is_accepted_while_redis_is_down_and_delivered_after(service, private_redis):
    stream = redis.Redis.from_url(private_redis.url, decode_responses=True)
    http = httpx.Client(base_url=service.base_url, timeout=10)
    key = new_api_key()
    try:
        # Before the outage: accepted and delivered.
        before = [event for event, _took in _post_all(http, _serve(service, key, BEFORE // 5))]
        _wait_for_backlog(service, 0, timeout=10)
        assert [f["event_id"] for _id, f in stream.xrange(FEEDBACK_EVENTS_STREAM)] == [
            e["id"] for e in before
        ]

        private_redis.stop()

        # During the outage: answers are still recorded and rated, each promptly, and the
        # outbox keeps what the relay cannot deliver.
        during = _post_all(http, _serve(service, key, DURING // 5))
        assert http.get("/readyz").status_code == 200  # serving does not need Redis
        assert _backlog(service) == DURING

        # A restart during the outage (SIGTERM, then a fresh process that starts without
        # Redis) keeps the backlog, and the new process accepts more.
        stopping = time.monotonic()
        service.stop()
        assert service.process.returncode == 0
        assert time.monotonic() - stopping < 5, "shutdown hung on the unreachable Redis"
        service.start()
        during += _post_all(http, _serve(service, key, AFTER_RESTART // 5))
        slowest = max(took for _event, took in during)
        assert slowest < 1.0, f"a POST took {slowest:.2f} s while Redis was down"
        assert _backlog(service) == DURING + AFTER_RESTART
        _wait_for_backlog_gauge(http, DURING + AFTER_RESTART)  # ... which /metrics shows
        assert _backlog(service) == DURING + AFTER_RESTART

        private_redis.start()
        recovery = _wait_for_backlog(service, 0, timeout=30)

        # Every event once, in the order the service accepted them, with its fields.
        accepted = before + [event for event, _took in during]
        entries = stream.xrange(FEEDBACK_EVENTS_STREAM)
        assert [f["event_id"] for _id, f in entries] == [e["id"] for e in accepted]
        auth = {"Authorization": f"Bearer {key}"}
        for (_entry_id, fields), event in zip(entries, accepted, strict=True):
            stored = http.get(f"/v1/feedback/{event['id']}", headers=auth).json()
            assert fields == stream_fields({**event, "comparison": stored["comparison"]})
            # The relay remembers each delivery, so a retry after a crash cannot add it again.
            assert stream.ttl(feedback_delivered_key(event["id"])) > 0

        _wait_for_backlog_gauge(http, 0)
        # Counters are per process: the restarted one delivered the whole backlog.
        delivered = _metric(http, "flywheel_feedback_outbox_delivered_total")
        assert delivered == DURING + AFTER_RESTART
        assert _metric(http, "flywheel_feedback_outbox_errors_total") >= 1
    finally:
        http.close()
        stream.close()

    log = service.log_path.read_text()
    # One warning per process and outage, not one per retry.
    assert log.count("outbox relay delivery failing") == 2, log
    assert log.count("outbox relay delivery recovered") == 1, log
    print(f"slowest POST during the outage {slowest:.3f} s; delivered {recovery:.1f} s after")
