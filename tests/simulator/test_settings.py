"""The demo's sizes: quick presets fill what the environment leaves unset."""

from __future__ import annotations

from services.simulator.settings import QUICK_SIZES, DemoSettings


def test_quick_takes_its_sizes_unless_the_environment_says_otherwise(monkeypatch):
    default = DemoSettings()
    assert default.rounds == 2 and default.min_win_rate == 0.5
    quick = DemoSettings(quick=True)
    assert quick.rounds == QUICK_SIZES["rounds"] and quick.max_tokens == QUICK_SIZES["max_tokens"]
    monkeypatch.setenv("FLYWHEEL_DEMO_ROUNDS", "4")
    assert DemoSettings(quick=True).rounds == 4


def test_the_trainer_starts_a_run_once_enough_pairs_are_in():
    settings = DemoSettings(pairs_per_run=150)
    env = settings.trainer_env()
    assert env["FLYWHEEL_TRAINER_MIN_NEW_PAIRS"] == "150"
    assert env["FLYWHEEL_TRAINER_PPO_ITERATIONS"] == str(settings.ppo_iterations)
