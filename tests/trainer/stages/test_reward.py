"""The reward-model stage in this process on the tiny model: each comparison trains a reward
model's lineage once, even when a snapshot after a rejected run holds it again."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from services.trainer import snapshot
from services.trainer.stages import reward
from services.trainer.stages.context import StageContext
from tests.harness import internal_channel
from tests.trainer.trainer_helpers import record_great_rankings


def _run_stage(settings, run_id: str, taken: snapshot.Snapshot, work: Path):
    ctx = StageContext(run_id, "reward_model", {"snapshot": taken.outputs()}, work, settings)
    return reward.train(ctx)


def _new_training_groups(path: Path, since: datetime) -> int:
    return sum(
        not g.heldout
        and snapshot.fold(g.prompt) == "reward"
        and datetime.fromisoformat(g.recorded_at) >= since
        for g in snapshot.read(path)
    )


def test_a_warm_started_rm_trains_only_on_groups_its_lineage_has_not_seen(
    feedback, settings, model_store, tmp_path
):
    datasets = tmp_path / "datasets"
    with internal_channel(feedback.target) as channel:
        record_great_rankings(feedback.stub, feedback.http, 40)
        first = snapshot.export(channel, datasets, None, settings.heldout_percent)
        done = _run_stage(settings, "run_1", first, tmp_path / "r1")
        model_store.promote("reward", done.outputs["version"])
        first_groups = done.outputs["groups"]

        # The run was then rejected at the policy gate, so the next snapshot starts where the
        # last *succeeded* run's did (here: the beginning) and holds the old groups again.
        record_great_rankings(feedback.stub, feedback.http, 12, seed=1)
        again = snapshot.export(channel, datasets, None, settings.heldout_percent)
        second = _run_stage(settings, "run_2", again, tmp_path / "r2")

        model_store.promote("reward", second.outputs["version"])
        # Another run from the beginning: every group in it has trained the promoted RM.
        only_old = snapshot.export(channel, datasets, None, settings.heldout_percent)

    old_and_new = sum(
        not g.heldout and snapshot.fold(g.prompt) == "reward" for g in snapshot.read(again.path)
    )
    assert first_groups > 0
    assert second.outputs["groups"] == _new_training_groups(again.path, first.until) > 0
    assert second.outputs["groups"] == old_and_new - first_groups  # none of the old ones
    trained = model_store.get("reward", second.outputs["version"])
    assert trained.manifest.parent == done.outputs["version"]
    assert datetime.fromisoformat(trained.manifest.config["trained_until"]) == again.until

    # A snapshot with nothing new for it keeps the promoted RM instead of training it again.
    kept = _run_stage(settings, "run_3", only_old, tmp_path / "r3")
    assert (kept.status, kept.outputs["version"], kept.outputs["groups"]) == (
        "done",
        trained.version,
        0.0,
    )
    assert len(model_store.versions("reward")) == 2
