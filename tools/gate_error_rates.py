"""How often the gates pass, by the real decision code on simulated verdicts.

``python -m tools.gate_error_rates`` prints the table in docs/trainer.md: for several numbers
of held-out prompts, the share of candidates promoted when they are exactly as good as the
promoted policy (the false promotion rate) and when they win 60% or 65% of comparisons (the
power). tests/trainer/test_gate_error_rates.py checks the two rates the defaults promise.

The model of the verdicts: each of a prompt's answers wins its comparison independently with
probability ``p``, no ties. Prompts that differ in how much the candidate helps add variance
between prompts; the bound resamples prompts, so it widens with it, and the power falls.
"""

from __future__ import annotations

import argparse
import random

from services.trainer.estimates import mean_estimate
from services.trainer.gates import AnswerStats, policy_gate, reward_model_gate
from services.trainer.settings import TrainerSettings
from services.trainer.stages.policy import policy_limits

# Every check but the win rate passes, so the share promoted is the win-rate rule's alone.
_SAME_ANSWERS = AnswerStats(end_of_turn_rate=0.9, mean_length=40.0, distinct_rate=0.9)


def promoted_share(
    win_probability: float,
    prompts: int,
    samples_per_prompt: int,
    settings: TrainerSettings,
    trials: int,
    seed: int = 0,
) -> float:
    """The share of ``trials`` simulated gates that pass a candidate whose every answer wins
    with ``win_probability``, asked ``prompts`` held-out prompts ``samples_per_prompt`` times."""
    rng = random.Random(seed)
    limits = policy_limits(settings)
    passed = 0
    for _ in range(trials):
        per_prompt = [
            sum(rng.random() < win_probability for _ in range(samples_per_prompt))
            / samples_per_prompt
            for _ in range(prompts)
        ]
        # As the stage asks it: the bootstrap's own fixed seed, the data drawn anew.
        verdict = policy_gate(
            mean_estimate(per_prompt, settings.bootstrap_samples, settings.gate_alpha),
            kl=1.0,
            tax_perplexity_ratio=1.0,
            candidate=_SAME_ANSWERS,
            reference=_SAME_ANSWERS,
            limits=limits,
        )
        passed += verdict.passed
    return passed / trials


def rm_passed_share(
    new_accuracy: float,
    promoted_accuracy: float,
    groups: int,
    settings: TrainerSettings,
    trials: int,
    pairs_per_group: int = 3,
    seed: int = 0,
) -> float:
    """The share of ``trials`` simulated RM gates that pass a new RM (each pair ordered right
    with ``new_accuracy``) against a promoted one (``promoted_accuracy``), on ``groups``
    held-out groups of ``pairs_per_group`` pairs; the two models err independently."""
    rng = random.Random(seed)

    def group_accuracy(p: float) -> float:
        return sum(rng.random() < p for _ in range(pairs_per_group)) / pairs_per_group

    passed = 0
    for _ in range(trials):
        ours = [group_accuracy(new_accuracy) for _ in range(groups)]
        gains = [a - group_accuracy(promoted_accuracy) for a in ours]
        alpha, resamples = settings.gate_alpha, settings.bootstrap_samples
        verdict = reward_model_gate(
            mean_estimate(ours, resamples, alpha),
            mean_estimate(gains, resamples, alpha),
            tolerance=settings.rm_gate_tolerance,
            first_margin=settings.rm_first_margin,
        )
        passed += verdict.passed
    return passed / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    settings = TrainerSettings()
    samples = settings.gate_samples_per_prompt
    print(
        f"alpha {settings.gate_alpha}, bound above {settings.min_win_rate}, "
        f"{samples} answers per prompt, {args.trials} simulated gates per cell"
    )
    print("| held-out prompts | promoted when equal | when winning 60% | when winning 65% |")
    print("|---|---|---|---|")
    for prompts in (8, 16, 32, 64, 128):
        shares = [
            promoted_share(p, prompts, samples, settings, args.trials) for p in (0.5, 0.6, 0.65)
        ]
        print(f"| {prompts} | " + " | ".join(f"{share:.1%}" for share in shares) + " |")
    print(
        f"\nRM gate: tolerance {settings.rm_gate_tolerance}, 3 pairs a group, models at 0.7 "
        "accuracy erring independently"
    )
    print("| held-out groups | passed when equal | when 0.05 worse | when 0.10 worse |")
    print("|---|---|---|---|")
    for groups in (10, 25, 50, 100, 200):
        shares = [
            rm_passed_share(0.7 - loss, 0.7, groups, settings, args.trials)
            for loss in (0.0, 0.05, 0.10)
        ]
        print(f"| {groups} | " + " | ".join(f"{share:.1%}" for share in shares) + " |")


if __name__ == "__main__":
    main()
