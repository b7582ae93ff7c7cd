"""The spool and the recorder against the real feedback service: every served answer is
recorded, none lost (outage, SIGKILL), none doubled (lost reply), bad ones set aside."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from services.common.generated.flywheel.v1 import feedback_pb2
from services.common.service_auth import service_channel
from services.inference.gateway.recorder import InteractionRecorder
from services.inference.gateway.spool import InteractionSpool
from tests.harness import SERVICE_TOKEN, FeedbackService, wait_for
from tests.inference.gateway.gateway_helpers import make_interaction

REPO = Path(__file__).resolve().parents[3]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def recorders():
    """Makes recorders with fast retries; stops them (and closes their spools) at the end."""
    made: list[InteractionRecorder] = []

    def make(spool: InteractionSpool, target: str) -> InteractionRecorder:
        recorder = InteractionRecorder(
            spool,
            target,
            service_token=SERVICE_TOKEN,
            batch=16,
            retry_initial_s=0.05,
            retry_max_s=0.3,
            rpc_timeout_s=5,
        )
        made.append(recorder)
        recorder.start()
        return recorder

    yield make
    for recorder in made:
        recorder.stop(drain_timeout=0)
        recorder.spool.close()


def test_records_reach_the_feedback_service(tmp_path, feedback: FeedbackService, recorders):
    created_before = sample("flywheel_gateway_records_delivered_total", outcome="created")
    spool = InteractionSpool(tmp_path / "spool.sqlite3")
    recorder = recorders(spool, feedback.target)
    singles = [make_interaction() for _ in range(20)]
    for item in singles:
        spool.enqueue(item)
    # One request with n = 3: one group, one transaction.
    group = [
        make_interaction(
            f"resp_group_{i}", candidate_group="grp_g", candidate_index=i, candidate_count=3
        )
        for i in range(3)
    ]
    spool.enqueue_many(group)
    wait_for(lambda: spool.pending_count() == 0, what="the spool to drain")
    for item in singles + group:
        stored = feedback.get(item.response_id)
        assert (stored.answer, stored.candidate_group, stored.candidate_index) == (
            item.answer,
            item.candidate_group,
            item.candidate_index,
        )
        assert stored.HasField("created_at")  # stamped by the spool, kept by the service
    assert feedback.interaction_count() == 23
    assert (recorder.delivered, recorder.duplicates, recorder.dead) == (23, 0, 0)
    assert sample("flywheel_gateway_records_delivered_total", outcome="created") == (
        created_before + 23
    )
    assert sample("flywheel_gateway_spool_pending") == 0


def test_an_enqueue_wakes_the_recorder(tmp_path, feedback: FeedbackService):
    spool = InteractionSpool(tmp_path / "spool.sqlite3")
    recorder = InteractionRecorder(
        spool, feedback.target, service_token=SERVICE_TOKEN, idle_poll_s=60
    )
    recorder.start()
    try:
        time.sleep(0.2)  # idle, with nothing to do for a minute
        started = time.monotonic()
        spool.enqueue(make_interaction())
        wait_for(lambda: recorder.delivered == 1, timeout=15)
        # Woken by the enqueue, not by its minute-long idle poll (margin for a slow machine).
        assert time.monotonic() - started < 10
    finally:
        recorder.stop()
        spool.close()


def test_outage_records_wait_and_are_delivered_after(
    tmp_path, feedback: FeedbackService, recorders, caplog
):
    caplog.set_level(logging.INFO, logger="services.inference.gateway.recorder")
    errors_before = sample("flywheel_gateway_record_errors_total", code="UNAVAILABLE")
    feedback.stop()
    spool = InteractionSpool(tmp_path / "spool.sqlite3")
    recorder = recorders(spool, feedback.target)
    items = [make_interaction() for _ in range(5)]
    for item in items:
        spool.enqueue(item)  # the answer is served: enqueue does not wait for the service
    wait_for(
        lambda: (
            sample("flywheel_gateway_record_errors_total", code="UNAVAILABLE") >= errors_before + 10
        ),
        what="several failed attempts",
    )
    assert spool.pending_count() == 5
    assert sample("flywheel_gateway_spool_pending") == 5
    assert max(r.attempts for r in spool.due(10, now=time.time() + 3600)) >= 2
    more = [make_interaction() for _ in range(3)]
    spool.enqueue_many(more)  # during the outage too

    feedback.start()  # same port, same database
    wait_for(lambda: spool.pending_count() == 0, what="the backlog to be delivered")
    for item in items + more:
        assert feedback.get(item.response_id).answer == item.answer
    assert feedback.interaction_count() == 8
    assert recorder.delivered == 8

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    messages = [r.getMessage() for r in caplog.records]
    assert any("reachable again" in m for m in messages)
    wait_for(lambda: any("spool drained: 8" in r.getMessage() for r in caplog.records))


class _Unavailable(grpc.RpcError, grpc.Future, grpc.Call):
    """A call the channel failed before sending, as one still reconnecting does."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "failed to connect to all addresses (channel still reconnecting)"

    def result(self, timeout=None):
        raise self

    def exception(self, timeout=None):
        return self

    def done(self):
        return True

    def cancel(self):
        return False

    def cancelled(self):
        return False

    def running(self):
        return False

    def traceback(self, timeout=None):
        return None

    def add_done_callback(self, fn):
        fn(self)

    def initial_metadata(self):
        return None

    def trailing_metadata(self):
        return None

    def time_remaining(self):
        return None

    def is_active(self):
        return False

    def add_callback(self, callback):
        return False


class _FailFirstCalls(grpc.UnaryUnaryClientInterceptor):
    """Fails the first ``count`` calls on the client side; every later call goes through to
    the real service. (The real race, calls that left while a channel reconnected beside
    calls that got through, cannot be produced on demand.)"""

    def __init__(self, count: int) -> None:
        self.left = count

    def intercept_unary_unary(self, continuation, client_call_details, request):
        if self.left > 0:
            self.left -= 1
            return _Unavailable()
        return continuation(client_call_details, request)


def test_a_round_the_service_answered_in_part_is_no_new_outage(
    tmp_path, feedback: FeedbackService, caplog
):
    """Just after the service comes back, part of a round can still fail UNAVAILABLE: the
    recorder retries those without logging an outage or restarting its recovery count."""
    caplog.set_level(logging.INFO, logger="services.inference.gateway.recorder")
    spool = InteractionSpool(tmp_path / "spool.sqlite3")
    channel = grpc.intercept_channel(
        service_channel(feedback.target, SERVICE_TOKEN), _FailFirstCalls(3)
    )
    items = [make_interaction() for _ in range(6)]
    spool.enqueue_many(items)
    recorder = InteractionRecorder(
        spool,
        feedback.target,
        service_token=SERVICE_TOKEN,
        batch=6,
        retry_initial_s=0.05,
        channel=channel,
    )
    recorder.start()
    try:
        wait_for(lambda: spool.pending_count() == 0, what="the round's failures to be retried")
    finally:
        recorder.stop()
        channel.close()
        spool.close()
    assert recorder.delivered == 6 and feedback.interaction_count() == 6
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any("reachable again" in r.getMessage() for r in caplog.records)


def test_stop_during_an_outage_keeps_the_records(tmp_path, feedback: FeedbackService):
    feedback.stop()
    spool = InteractionSpool(tmp_path / "spool.sqlite3")
    recorder = InteractionRecorder(
        spool, feedback.target, service_token=SERVICE_TOKEN, retry_initial_s=0.05, retry_max_s=0.2
    )
    recorder.start()
    spool.enqueue_many([make_interaction() for _ in range(4)])
    time.sleep(0.3)
    started = time.monotonic()
    assert recorder.stop(drain_timeout=5) == 4  # nothing to drain into: stops at once
    assert time.monotonic() - started < 2
    spool.close()

    feedback.start()
    spool = InteractionSpool(tmp_path / "spool.sqlite3")
    recorder = InteractionRecorder(spool, feedback.target, service_token=SERVICE_TOKEN)
    recorder.start()
    wait_for(lambda: spool.pending_count() == 0)
    assert recorder.stop() == 0
    spool.close()
    assert feedback.interaction_count() == 4


def test_a_lost_reply_is_not_doubled(tmp_path, feedback: FeedbackService, recorders):
    """The process dies after the service stored a record but before the spool forgot it:
    the restarted recorder sends it again, and the service keeps one copy."""
    path = tmp_path / "spool.sqlite3"
    item = make_interaction()
    with InteractionSpool(path) as spool:
        spool.enqueue(item)
    crash_image = tmp_path / "spool-at-crash.sqlite3"
    shutil.copy(path, crash_image)  # the spool as a crash right after the RPC would leave it
    with InteractionSpool(crash_image) as image:
        (spooled,) = image.due(1)

    first = recorders(InteractionSpool(path), feedback.target)
    wait_for(lambda: first.delivered == 1)
    assert feedback.interaction_count() == 1

    duplicates_before = sample("flywheel_gateway_records_delivered_total", outcome="duplicate")
    second = recorders(InteractionSpool(crash_image), feedback.target)
    wait_for(lambda: second.delivered == 1)
    assert second.duplicates == 1  # answered created = false
    assert second.spool.pending_count() == 0
    assert feedback.interaction_count() == 1
    assert sample("flywheel_gateway_records_delivered_total", outcome="duplicate") == (
        duplicates_before + 1
    )
    # The same, said by the service itself: the spooled record, sent a third time.
    response = feedback.stub.RecordInteraction(
        feedback_pb2.RecordInteractionRequest(interaction=spooled.interaction), timeout=5
    )
    assert response.created is False


_PRODUCER = """
import sys
from services.inference.gateway.spool import InteractionSpool
from tests.inference.gateway.gateway_helpers import make_interaction

spool = InteractionSpool(sys.argv[1])
print("ready", flush=True)
for i in range(1_000_000):
    item = make_interaction(f"resp_killed_{i}")
    spool.enqueue(item)
    print(item.response_id, flush=True)  # acknowledged: the gateway would now answer
"""


def test_the_spool_survives_sigkill(tmp_path, feedback: FeedbackService, recorders):
    path = tmp_path / "spool.sqlite3"
    producer = subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert producer.stdout.readline().strip() == "ready"
        acknowledged = [producer.stdout.readline().strip() for _ in range(40)]
        producer.send_signal(signal.SIGKILL)  # mid-stream: no shutdown code runs
        producer.wait(10)
        acknowledged += [line.strip() for line in producer.stdout if line.strip()]
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    assert producer.returncode == -signal.SIGKILL

    spool = InteractionSpool(path)
    pending = spool.pending_count()
    assert pending >= len(acknowledged)  # at most the one being written when killed is extra
    assert pending <= len(acknowledged) + 1
    recorder = recorders(spool, feedback.target)
    wait_for(lambda: spool.pending_count() == 0, what="the spool to drain")
    for response_id in acknowledged:
        assert feedback.get(response_id).response_id == response_id
    assert feedback.interaction_count() == pending == recorder.delivered


def test_a_refused_record_is_dead_lettered_and_does_not_block(
    tmp_path, feedback: FeedbackService, recorders, caplog
):
    caplog.set_level(logging.ERROR, logger="services.inference.gateway.recorder")
    dead_before = sample("flywheel_gateway_records_dead_total")
    taken = make_interaction()
    feedback.stub.RecordInteraction(
        feedback_pb2.RecordInteractionRequest(interaction=taken), timeout=5
    )
    malformed = make_interaction(feedback_token="")  # INVALID_ARGUMENT
    conflicting = make_interaction(taken.response_id, answer="Another answer.")  # ALREADY_EXISTS
    good = [make_interaction() for _ in range(4)]

    spool = InteractionSpool(tmp_path / "spool.sqlite3")
    spool.enqueue_many([good[0], malformed, good[1]])
    spool.enqueue_many([conflicting, good[2], good[3]])
    recorder = recorders(spool, feedback.target)
    wait_for(lambda: spool.pending_count() == 0, what="the spool to empty")

    for item in good:
        assert feedback.get(item.response_id).answer == item.answer
    assert feedback.get(taken.response_id).answer == taken.answer  # not overwritten
    assert (recorder.delivered, recorder.dead) == (4, 2)
    dead = {d.response_id: d for d in spool.dead_letters()}
    assert set(dead) == {malformed.response_id, conflicting.response_id}
    assert dead[malformed.response_id].error.startswith("INVALID_ARGUMENT")
    assert "feedback_token" in dead[malformed.response_id].error
    assert dead[conflicting.response_id].error.startswith("ALREADY_EXISTS")
    assert dead[conflicting.response_id].interaction.answer == "Another answer."
    assert spool.dead_count() == 2
    assert sample("flywheel_gateway_records_dead_total") == dead_before + 2
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert malformed.response_id in logged and conflicting.response_id in logged

    with pytest.raises(grpc.RpcError) as refused:  # the service has neither
        feedback.get(malformed.response_id)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
