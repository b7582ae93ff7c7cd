"""How often the rollback watch rolls back, by the real decision code on simulated thumbs.

``python -m tools.rollback_error_rates`` prints docs/trainer.md's table: versions whose users
give thumbs-up at a rate equal to their parent's, or some points below it, watched as the
trainer watches them (the real ``rollback_due`` asked after every ``step`` new votes of each
version, up to a window), and how many votes a rollback took.
tests/trainer/test_rollback_error_rates.py checks the defaults' promises.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass

from services.trainer.sequential import rollback_due
from services.trainer.settings import TrainerSettings


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
            verdict = rollback_due(
                version_up,
                votes - version_up,
                parent_up,
                votes - parent_up,
                alpha=settings.rollback_alpha,
                margin=settings.rollback_margin,
                planned_votes=settings.rollback_planned_votes,
            )
            if verdict.passed:
                took.append(votes)
                break
    return Watched(len(took) / trials, statistics.median(took) if took else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    settings = TrainerSettings()
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
