"""The trainer's Prometheus metrics (served by each worker and by beat on ports of their own)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS = Counter(
    "flywheel_trainer_runs_total",
    "Runs that ended, by the stage they ended at and how (succeeded, rejected, failed, cancelled).",
    ["stage", "outcome"],
)
STAGE_SECONDS = Histogram(
    "flywheel_trainer_stage_seconds",
    "Duration of a stage attempt, by stage and outcome.",
    ["stage", "outcome"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 28800),
)
RM_ACCURACY = Gauge(
    "flywheel_trainer_rm_heldout_accuracy", "Held-out pairwise accuracy of the newest RM."
)
WIN_RATE = Gauge(
    "flywheel_trainer_policy_win_rate",
    "Win rate of the newest policy candidate against the promoted policy (new RM as judge).",
)
KL = Gauge("flywheel_trainer_policy_kl", "KL of the newest policy candidate to the reference.")
PROMOTIONS = Counter("flywheel_trainer_promotions_total", "Versions promoted, by role.", ["role"])
ROLLBACKS = Counter("flywheel_trainer_rollbacks_total", "Automatic rollbacks, by role.", ["role"])
ACTIVE_RUN = Gauge("flywheel_trainer_run_active", "1 while this worker drives a run.")
