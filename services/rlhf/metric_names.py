"""PPO's per-iteration statistics under the names TRL and OpenRLHF users know from their logs.

Apart from ppo.py so that code which only reports them (the trainer's Prometheus gauges)
does not load torch.
"""

from __future__ import annotations

STANDARD_METRIC_NAMES = {
    "objective/kl": "kl",
    "objective/entropy": "entropy",
    "objective/scores": "score",
    "policy/approxkl_avg": "approx_kl",
    "policy/clipfrac_avg": "policy_clip_fraction",
    "loss/policy_avg": "policy_loss",
    "loss/value_avg": "value_loss",
    "val/ratio": "ratio",
}


def standard_metrics(stats: dict[str, float]) -> dict[str, float]:
    """One iteration's statistics (``PPOTrainer.step``) under the standard names."""
    return {name: stats[key] for name, key in STANDARD_METRIC_NAMES.items()}
