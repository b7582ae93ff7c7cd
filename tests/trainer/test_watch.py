"""The watch in the test process (no Celery; test_flywheel.py runs it under beat): the real
feedback service's thumbs, the real registry and run store. A canary is judged on the votes of
its own period, held at its longest wait, and then watched against its parent over that same
period."""

from __future__ import annotations

import shutil

from services.common.generated.flywheel.v1 import feedback_pb2
from services.trainer.control import Trainer
from tests.harness import wait_for
from tests.trainer.trainer_helpers import record_thumbs


def _thumbs_recorded(feedback, count: int) -> None:
    def total() -> int:
        stats = feedback.stub.Stats(feedback_pb2.StatsRequest(), timeout=10)
        return sum(t.thumbs_up + t.thumbs_down for t in stats.thumbs)

    wait_for(lambda: total() == count, 30, f"{count} thumbs to be stored")


def test_a_canary_is_judged_on_its_own_period_then_watched_against_its_parent(
    feedback, settings, model_store
):
    v0 = model_store.promoted("policy")
    model_store.create_version(
        "policy", lambda f: shutil.copytree(v0.path, f, dirs_exist_ok=True), parent="v0"
    )
    # Another period, other traffic: users disliked an earlier trial of v1 and liked v0.
    record_thumbs(feedback.stub, feedback.http, "v1", -1, 30)
    record_thumbs(feedback.stub, feedback.http, "v0", 1, 30)
    _thumbs_recorded(feedback, 60)
    model_store.start_canary("policy", "v1", 0.2)
    trainer = Trainer(settings)

    look = trainer.watch()
    assert (look["kind"], look["decision"], look["votes"]) == ("canary", "wait", (0, 0)), look
    assert trainer.watch_report()["decision"] == "wait"  # what the status views read

    # In the canary's period both do equally well: not shown worse, promoted at the longest wait.
    record_thumbs(feedback.stub, feedback.http, "v1", 1, 5)
    record_thumbs(feedback.stub, feedback.http, "v0", 1, 20)
    _thumbs_recorded(feedback, 85)
    settings.canary_max_wait_s = 0.001
    look = trainer.watch()
    assert (look["decision"], look["votes"]) == ("promote", (5, 20)), look
    assert "undecided after the longest wait" in look["reason"]
    assert model_store.serving("policy").promoted == "v1"
    assert model_store.serving("policy").canary is None

    # Promoted: watched against v0 over the same period, so v0's old votes do not count and
    # v1's earlier dislikes neither; v1 now disliked while v0 has only its canary-period votes.
    record_thumbs(feedback.stub, feedback.http, "v1", -1, 60)
    _thumbs_recorded(feedback, 145)
    look = trainer.watch()
    assert (look["kind"], look["against"], look["votes"]) == ("promoted", "v0", (65, 20)), look
    assert look["decision"] == "roll_back", look
    assert model_store.promoted("policy").version == "v0"
    assert trainer.store.rolled_back("v1")
    assert trainer.watch()["kind"] == "idle"  # v0 has no parent to be watched against
