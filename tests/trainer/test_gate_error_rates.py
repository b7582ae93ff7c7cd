"""The policy gate's error rates at the default sizes, measured by the real decision code
(the bootstrap bound and policy_gate) on simulated verdicts (tools/gate_error_rates.py).

The simulation is seeded, so the measured rates are the same on every run and machine; they
are printed (pytest -s) for docs/trainer.md's table."""

from __future__ import annotations

from services.trainer.settings import TrainerSettings
from tools.gate_error_rates import promoted_share

TRIALS = 1000  # a rate near 5% is measured within about 0.7 points


def test_an_equal_candidate_is_promoted_at_most_alpha_of_the_time():
    settings = TrainerSettings()
    share = promoted_share(
        0.5, settings.gate_prompts, settings.gate_samples_per_prompt, settings, TRIALS
    )
    print(f"equal candidate promoted {share:.1%} of {TRIALS} gates")
    assert share <= settings.gate_alpha


def test_a_candidate_winning_65_percent_is_promoted_at_least_80_percent_of_the_time():
    settings = TrainerSettings()
    share = promoted_share(
        0.65, settings.gate_prompts, settings.gate_samples_per_prompt, settings, TRIALS
    )
    print(f"65% candidate promoted {share:.1%} of {TRIALS} gates")
    assert share >= 0.8
