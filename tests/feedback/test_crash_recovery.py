"""Crash recovery: feedback posted under load while the service is killed with SIGKILL (three
times) and restarted on the same ports and the same store, on SQLite and on PostgreSQL. Every
event that got a 2xx must be in the store and on the Redis stream exactly once, and every
client_event_id must name exactly one stored event.

Each client retries a request that got no answer (connection refused, connection dropped, 503)
with the same body and the same client_event_id until it gets one, as a well-behaved client
does; a retry of a request whose first attempt did commit must be answered 200 with
``Idempotent-Replayed: true`` and the stored event.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

import httpx
import pytest
import redis
import sqlalchemy as sa

from services.common.credentials import new_api_key
from services.common.generated.flywheel.v1 import feedback_pb2, feedback_pb2_grpc
from services.common.redis_names import FEEDBACK_EVENTS_STREAM
from services.feedback.store.tables import feedback_events
from tests.feedback.feedback_helpers import (
    ServedGroup,
    ServiceProcess,
    serve_group,
    stream_fields,
)

KEYS = 4
GROUPS_PER_KEY = 10
CLIENTS = 16


@dataclass
class Attempt:
    """One feedback request as a client holds it, and every answer it got."""

    client_event_id: str
    body: dict
    headers: dict[str, str]
    group: ServedGroup
    answers: list[tuple[int, str, bool]] = field(default_factory=list)  # status, id, replayed
    errors: list[str] = field(default_factory=list)  # attempts that got no answer

    @property
    def event_id(self) -> str | None:
        return self.answers[-1][1] if self.answers else None


def _new_request(rng: random.Random, groups: list[ServedGroup], run: str, n: int) -> Attempt:
    group = rng.choice(groups)
    ids = list(group.response_ids)
    kind = rng.choice(["thumb", "ranking", "pairwise"])
    if kind == "thumb":
        body = {"kind": "thumb", "response_id": rng.choice(ids), "value": rng.choice([1, -1])}
    elif kind == "ranking":
        rng.shuffle(ids)
        tiers = [[ids[0]], ids[1:]] if rng.random() < 0.3 else [[r] for r in ids]
        body = {"kind": "ranking", "ranking": tiers}
    else:
        a, b = rng.sample(ids, 2)
        body = {
            "kind": "pairwise",
            "response_a": a,
            "response_b": b,
            "outcome": rng.choice(["a", "b", "tie", "both_bad"]),
        }
    body["client_event_id"] = f"{run}:{n}"
    # Most clients hold the API key; some (browsers) only the group's feedback token.
    headers = group.auth if rng.random() < 0.75 else {"X-Feedback-Token": group.feedback_token}
    return Attempt(body["client_event_id"], body, headers, group)


def _send(http: httpx.Client, attempt: Attempt) -> bool:
    """Post once; True if the request got its final answer (a 2xx)."""
    try:
        response = http.post("/v1/feedback", json=attempt.body, headers=attempt.headers)
    except httpx.HTTPError as error:  # refused, dropped mid-request, timed out: unknown
        attempt.errors.append(type(error).__name__)
        return False
    if response.status_code == 503:  # the store could not commit: not acknowledged
        attempt.errors.append("503")
        return False
    assert response.status_code in (200, 201), (attempt.body, response.text)
    event = response.json()
    replayed = response.headers.get("Idempotent-Replayed") == "true"
    attempt.answers.append((response.status_code, event["id"], replayed))
    assert event["client_event_id"] == attempt.client_event_id
    return True


class Load:
    """``CLIENTS`` threads posting feedback back to back, each retrying what got no answer."""

    def __init__(self, service: ServiceProcess, groups: list[ServedGroup]) -> None:
        self.service = service
        self.groups = groups
        self.run = uuid.uuid4().hex[:8]
        self.attempts: list[Attempt] = []
        self.unanswered: list[Attempt] = []
        self.acknowledged = 0
        self._next = 0
        self._kill_at: int | None = None
        self._killed = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
            assert not thread.is_alive()

    def wait_for(self, more: int, timeout: float = 15.0) -> None:
        """Until ``more`` further requests have been acknowledged."""
        target = self.acknowledged + more
        deadline = time.monotonic() + timeout
        while self.acknowledged < target:
            assert time.monotonic() < deadline, f"only {self.acknowledged} acknowledged"
            time.sleep(0.01)

    def kill_on_answer(self, after: int, timeout: float = 15.0) -> None:
        """SIGKILL the service from the client thread that gets the ``after``-th next 2xx, the
        moment it has it: the other requests of that group commit are then most likely
        committed but not yet answered (their retries must be replays)."""
        self._killed.clear()
        with self._lock:
            self._kill_at = self.acknowledged + after
        assert self._killed.wait(timeout), f"only {self.acknowledged} acknowledged"

    def _acknowledge(self, response: httpx.Response) -> None:
        if response.status_code not in (200, 201):
            return
        with self._lock:
            self.acknowledged += 1
            if self._kill_at is None or self.acknowledged < self._kill_at:
                return
            self._kill_at = None
            self.service.kill()
        self._killed.set()

    def _new(self, rng: random.Random) -> Attempt:
        with self._lock:
            self._next += 1
            attempt = _new_request(rng, self.groups, self.run, self._next)
            self.attempts.append(attempt)
        return attempt

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        waiting: deque[Attempt] = deque()
        hooks = {"response": [self._acknowledge]}
        with httpx.Client(base_url=self.service.base_url, timeout=5, event_hooks=hooks) as http:
            while not self._stop.is_set():
                attempt = waiting.popleft() if waiting else self._new(rng)
                if not _send(http, attempt):
                    waiting.append(attempt)
                    self._stop.wait(0.05)
        with self._lock:
            self.unanswered.extend(waiting)


def _stats(service: ServiceProcess) -> feedback_pb2.StatsResponse:
    with service.channel() as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        return stub.Stats(feedback_pb2.StatsRequest(), timeout=10, wait_for_ready=True)


def _wait_for_empty_outbox(service: ServiceProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (backlog := _stats(service).outbox_backlog) != 0:
        assert time.monotonic() < deadline, f"outbox still holds {backlog} events"
        time.sleep(0.1)


@pytest.fixture
def service(tmp_path, database_url, feedback_redis_url):
    """The service as a child process (not started yet), killed at the end whatever happens."""
    process = ServiceProcess(tmp_path / "data", feedback_redis_url, database_url)
    process.data_dir.mkdir()
    try:
        yield process
    finally:
        process.kill()


def test_sigkill_under_load_loses_and_duplicates_nothing(service, database_url, feedback_redis_url):
    service.start()
    with service.channel() as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        groups = [
            serve_group(stub, api_key=api_key)
            for api_key in [new_api_key() for _ in range(KEYS)]
            for _ in range(GROUPS_PER_KEY)
        ]

    load = Load(service, groups)
    load.start()
    try:
        # Kill the service under load twice right after a group commit, then once at an
        # arbitrary moment (mid-request, mid-commit, mid-relay), each time bringing it back on
        # the same ports and store while the clients keep posting and retrying.
        load.kill_on_answer(after=100)
        for right_after_commit in (True, False):
            time.sleep(0.3)
            service.start()
            load.wait_for(50)
            if right_after_commit:
                load.kill_on_answer(after=1)
            else:
                time.sleep(random.uniform(0.0, 0.2))
                service.kill()
        time.sleep(0.3)
        service.start()
        load.wait_for(50)
    finally:
        load.stop()

    # What the clients still had waiting when they stopped: retry until answered.
    with httpx.Client(base_url=service.base_url, timeout=5) as http:
        for attempt in load.unanswered:
            deadline = time.monotonic() + 10
            while not _send(http, attempt):
                assert time.monotonic() < deadline, (attempt.body, attempt.errors)
                time.sleep(0.05)

    attempts = load.attempts
    assert all(a.answers for a in attempts)
    retried = [a for a in attempts if a.errors]
    # Requests were in flight at the kills (not only refused connections), or the test
    # proves nothing.
    assert any(set(a.errors) - {"ConnectError"} for a in retried), [a.errors for a in retried]

    # Every client_event_id names exactly one event: a retry of a request that committed
    # before the kill (its answer lost) is a replay, 200 with the same event.
    acknowledged: dict[str, Attempt] = {}
    for attempt in attempts:
        first_status, event_id, first_replayed = attempt.answers[0]
        assert (first_status, first_replayed) in ((201, False), (200, True)), attempt.answers
        if first_status == 200:
            assert attempt.errors, attempt.answers
        assert [
            (s, e, r) for s, e, r in attempt.answers[1:] if (s, e, r) != (200, event_id, True)
        ] == []
        assert event_id not in acknowledged
        acknowledged[event_id] = attempt

    views: dict[str, dict] = {}
    with httpx.Client(base_url=service.base_url, timeout=5) as http:
        # A retry after the answer was lost gets the stored event back, not a new one.
        for attempt in random.Random(0).sample(attempts, 40):
            again = http.post("/v1/feedback", json=attempt.body, headers=attempt.headers)
            assert again.status_code == 200, again.text
            assert again.headers["Idempotent-Replayed"] == "true"
            assert again.json()["id"] == attempt.event_id

        # Every acknowledged event is in the store, as the client sent it.
        for event_id, attempt in acknowledged.items():
            stored = http.get(f"/v1/feedback/{event_id}", headers=attempt.group.auth)
            assert stored.status_code == 200, stored.text
            view = views[event_id] = stored.json()
            assert view["client_event_id"] == attempt.client_event_id
            assert view["kind"] == attempt.body["kind"]
            assert view["candidate_group"] == attempt.group.candidate_group

    # ... and nothing else is: the store holds exactly the acknowledged events, and every
    # replacement link is complete in both directions.
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = {
                row.id: row
                for row in conn.execute(
                    sa.select(
                        feedback_events.c.id,
                        feedback_events.c.client_event_id,
                        feedback_events.c.replaces,
                        feedback_events.c.replaced_by,
                    )
                )
            }
    finally:
        engine.dispose()
    assert {e: r.client_event_id for e, r in rows.items()} == {
        e: a.client_event_id for e, a in acknowledged.items()
    }
    for event_id, row in rows.items():
        if row.replaces is not None:
            assert rows[row.replaces].replaced_by == event_id
        if row.replaced_by is not None:
            assert rows[row.replaced_by].replaces == event_id
    counts = _stats(service).feedback_events
    assert counts.thumbs + counts.ranking + counts.pairwise == len(acknowledged)

    # Once the outbox has drained, the stream holds every acknowledged event exactly once.
    _wait_for_empty_outbox(service)
    with redis.Redis.from_url(feedback_redis_url, decode_responses=True) as client:
        stream = client.xrange(FEEDBACK_EVENTS_STREAM)
    on_stream = Counter(fields["event_id"] for _entry_id, fields in stream)
    assert [e for e, n in on_stream.items() if n > 1] == []
    assert set(on_stream) == set(acknowledged)
    for _entry_id, fields in stream:
        assert fields == stream_fields(views[fields["event_id"]])
    print(
        f"{len(attempts)} requests, {len(retried)} retried, "
        f"{sum(a.answers[0][0] == 200 for a in attempts)} committed but unanswered at a kill"
    )
