"""The watch's error rates (canary and rollback) at the defaults, measured by the real
decision code on simulated thumbs (tools/rollback_error_rates.py); seeded, so the same on every
machine, and printed (pytest -s) for docs/trainer.md's tables."""

from __future__ import annotations

from services.trainer.settings import TrainerSettings
from tools.rollback_error_rates import decide_canaries, watch


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


def test_a_canary_as_good_as_the_promoted_version_is_rolled_back_at_most_alpha_of_the_time():
    """Asked after every 10 new canary votes over a whole window (the promoted version getting
    its share of the traffic alongside)."""
    settings = TrainerSettings()
    seen = decide_canaries(0.6, 0.6, settings, trials=400, window=1000)
    print(f"equal canary: rolled back {seen.rolled_back:.1%}, early {seen.promoted_early:.1%}")
    assert seen.rolled_back <= settings.rollback_alpha


def test_a_canary_15_points_worse_is_rolled_back_and_never_promoted_early():
    settings = TrainerSettings()
    seen = decide_canaries(0.45, 0.6, settings, trials=200, window=1000)
    print(
        f"15 points worse canary: rolled back {seen.rolled_back:.1%}, "
        f"median {seen.median_votes} canary votes"
    )
    assert seen.rolled_back >= 0.9 and seen.median_votes is not None
    assert seen.promoted_early <= settings.rollback_alpha
