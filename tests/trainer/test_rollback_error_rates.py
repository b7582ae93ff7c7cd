"""The rollback watch's error rates at the defaults, measured by the real decision code on
simulated thumbs (tools/rollback_error_rates.py); seeded, so the same on every machine, and
printed (pytest -s) for docs/trainer.md's table."""

from __future__ import annotations

from services.trainer.settings import TrainerSettings
from tools.rollback_error_rates import watch


def test_a_version_as_good_as_its_parent_is_rolled_back_at_most_alpha_of_the_time():
    """Asked after every 10 new votes up to 300 each (the old rule: 31.4% in this setting)."""
    settings = TrainerSettings()
    seen = watch(0.6, 0.6, settings, trials=400, window=300)
    print(f"equal version rolled back {seen.rolled_back:.1%}")
    assert seen.rolled_back <= settings.rollback_alpha


def test_a_version_15_points_worse_is_rolled_back():
    settings = TrainerSettings()
    seen = watch(0.45, 0.6, settings, trials=200, window=1000)
    print(f"15 points worse: rolled back {seen.rolled_back:.1%}, median {seen.median_votes} votes")
    assert seen.rolled_back >= 0.9 and seen.median_votes is not None
