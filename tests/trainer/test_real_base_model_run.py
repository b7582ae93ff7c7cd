"""One whole small run on the real base model (SmolLM2-135M-Instruct): snapshot, reward model,
RM gate, PPO-ptx, policy gate and promotion, driven as the train worker drives it (stages in
subprocesses), on comparisons recorded through the real feedback service."""

from __future__ import annotations

import shutil

import pytest

from services.common.registry import ModelRegistry
from services.trainer.control import Trainer
from services.trainer.settings import TrainerSettings
from tests.trainer.trainer_helpers import drive, record_great_rankings

pytestmark = pytest.mark.slow


def test_a_small_run_on_the_real_base_model(feedback, env, real_store, tmp_path, monkeypatch):
    store = tmp_path / "real-models"
    shutil.copytree(real_store, store)
    sizes = {
        "FLYWHEEL_MODEL_STORE": str(store),
        "FLYWHEEL_TRAINER_RM_LR": "1e-4",
        "FLYWHEEL_TRAINER_RM_EPOCHS": "2",
        "FLYWHEEL_TRAINER_RM_MAX_LENGTH": "128",
        "FLYWHEEL_TRAINER_PPO_ITERATIONS": "2",
        "FLYWHEEL_TRAINER_PPO_MAX_NEW_TOKENS": "24",
        "FLYWHEEL_TRAINER_GATE_MAX_NEW_TOKENS": "24",
    }
    for name, value in {**env, **sizes}.items():
        monkeypatch.setenv(name, value)
    record_great_rankings(feedback.stub, feedback.http, 40)
    trainer = Trainer(TrainerSettings())
    queued: list[str] = []
    assert trainer.check(queued.append)["started"]

    outcome = drive(trainer.settings, queued[0])

    from services.cli.train import render  # how `flywheel train status` prints it

    print(render(trainer.status(1)))
    assert outcome == "succeeded", trainer.status(1)
    run = trainer.store.get(queued[0])
    assert run.stages["reward_model"].outputs["heldout_accuracy"] >= 0.55
    registry = ModelRegistry(store)
    assert registry.promoted("policy").version == "v1"
    assert registry.promoted("reward").version == "v0"
    gate = run.stages["policy_gate"].outputs
    assert gate["tax_perplexity_ratio"] < 1.25 and gate["kl"] < 20
