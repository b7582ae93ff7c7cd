"""How often the watch rolls back or promotes, by the real decision code on simulated thumbs.

``python -m tools.rollback_error_rates`` prints docs/trainer.md's two tables:

- canaries whose users give thumbs-up at a rate equal to the promoted version's, or some points
  below or above it, served to ``CANARY_SHARE`` of the keys (so the promoted version gets
  (1 - share) / share votes for each of the canary's) and decided as the watch decides them
  (the real ``canary_decision`` with the settings' rule, ``watch.canary_verdict``, asked
  after every ``step`` new canary votes, up to a window that stands for the longest wait);
- promoted versions against their parent (the real ``rollback_due``, likewise).

tests/trainer/test_rollback_error_rates.py checks the defaults' promises.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass

from services.trainer.settings import TrainerSettings
from services.trainer.watch import canary_verdict, rollback_verdict


@dataclass(frozen=True)
class Watched:
    rolled_back: float  # share of simulated versions rolled back within the window
    median_votes: float | None  # votes each version had when it was, among those rolled back


def watch(
    version_rate: float,
    parent_rate: float,
    settings: TrainerSettings,
    trials: int,
    window: int = 300,
    step: int = 10,
    seed: int = 0,
) -> Watched:
    """``trials`` versions watched over ``window`` votes each (the parent's arriving alongside),
    the watch asking after every ``step`` new votes."""
    rng = random.Random(seed)
    took: list[int] = []
    for _ in range(trials):
        version_up = parent_up = 0
        for votes in range(step, window + 1, step):
            version_up += sum(rng.random() < version_rate for _ in range(step))
            parent_up += sum(rng.random() < parent_rate for _ in range(step))
            verdict = rollback_verdict(
                settings, (version_up, votes - version_up), (parent_up, votes - parent_up)
            )
            if verdict.passed:
                took.append(votes)
                break
    return Watched(len(took) / trials, statistics.median(took) if took else None)


@dataclass(frozen=True)
class Decided:
    rolled_back: float  # share of simulated canaries rolled back within the window
    promoted_early: float  # share promoted before the window's end (shown not worse)
    median_votes: float | None  # the canary's votes when it was rolled back, among those


def decide_canaries(
    canary_rate: float,
    promoted_rate: float,
    settings: TrainerSettings,
    trials: int,
    window: int = 300,
    step: int = 10,
    seed: int = 0,
) -> Decided:
    """``trials`` canaries, each watched until decided or ``window`` canary votes; the
    promoted version's votes arrive alongside, in the traffic's proportion."""
    rng = random.Random(seed)
    per_canary_vote = (1 - settings.canary_share) / settings.canary_share
    took: list[int] = []
    promoted_early = 0
    for _ in range(trials):
        c_up = p_up = p_votes = 0
        for votes in range(step, window + 1, step):
            c_up += sum(rng.random() < canary_rate for _ in range(step))
            new = round(votes * per_canary_vote) - p_votes
            p_up += sum(rng.random() < promoted_rate for _ in range(new))
            p_votes += new
            decision = canary_verdict(settings, (c_up, votes - c_up), (p_up, p_votes - p_up), 0.0)
            if decision.action == "roll_back":
                took.append(votes)
                break
            if decision.action == "promote":
                promoted_early += 1
                break
    return Decided(
        len(took) / trials, promoted_early / trials, statistics.median(took) if took else None
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    settings = TrainerSettings()
    print(
        f"Canaries: share {settings.canary_share}, alpha {settings.rollback_alpha}, rollback "
        f"margin {settings.rollback_margin}, promote margin {settings.canary_margin}; asked "
        f"every 10 canary votes; {args.trials} trials"
    )
    print(
        "| thumbs-up: canary vs promoted | window (canary votes) | rolled back "
        "| promoted early | median canary votes to roll back |"
    )
    print("|---|---|---|---|---|")
    for canary, promoted, window in [
        (0.6, 0.6, 300),
        (0.6, 0.6, 1000),
        (0.53, 0.6, 1000),
        (0.45, 0.6, 300),
        (0.45, 0.6, 1000),
        (0.3, 0.6, 300),
        (0.7, 0.6, 1000),
    ]:
        seen = decide_canaries(canary, promoted, settings, args.trials, window=window)
        votes = "-" if seen.median_votes is None else f"{seen.median_votes:.0f}"
        print(
            f"| {canary} vs {promoted} | {window} | {seen.rolled_back:.1%} "
            f"| {seen.promoted_early:.1%} | {votes} |"
        )
    print()
    print(
        f"alpha {settings.rollback_alpha}, margin {settings.rollback_margin}, tightest near "
        f"{settings.rollback_planned_votes} votes; asked every 10 votes; {args.trials} trials"
    )
    print("| thumbs-up: version vs parent | window (votes each) | rolled back | median votes |")
    print("|---|---|---|---|")
    for version, parent, window in [
        (0.6, 0.6, 300),
        (0.6, 0.6, 2000),
        (0.5, 0.6, 1000),
        (0.45, 0.6, 1000),
        (0.3, 0.6, 1000),
    ]:
        seen = watch(version, parent, settings, args.trials, window=window)
        votes = "-" if seen.median_votes is None else f"{seen.median_votes:.0f}"
        print(f"| {version} vs {parent} | {window} | {seen.rolled_back:.1%} | {votes} |")


if __name__ == "__main__":
    main()
