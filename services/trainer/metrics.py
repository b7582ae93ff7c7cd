"""The trainer's Prometheus metrics (served by each worker and by beat on ports of their own)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from services.common.registry import ROLES
from services.common.training_runs import RUN_OUTCOMES
from services.rlhf.metric_names import STANDARD_METRIC_NAMES

RUNS = Counter(
    "flywheel_trainer_runs_total",
    "Runs that ended, by the stage they ended at and how (succeeded, waiting for data, "
    "rejected, failed, cancelled).",
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
RM_GATE_BOUND = Gauge(
    "flywheel_trainer_rm_gate_lower_bound",
    "The lower confidence bound the newest RM gate decided on: the accuracy's for the first "
    "RM, the gain's over the promoted RM after.",
)
RM_GATE_THRESHOLD = Gauge(
    "flywheel_trainer_rm_gate_threshold", "What that bound had to reach for the RM to pass."
)
WIN_RATE = Gauge(
    "flywheel_trainer_policy_win_rate",
    "Win rate of the newest policy candidate against the promoted policy (under the judge).",
)
WIN_RATE_LOWER = Gauge(
    "flywheel_trainer_policy_win_rate_lower_bound",
    "The lower confidence bound of that win rate: what the policy gate decided on.",
)
WIN_RATE_THRESHOLD = Gauge(
    "flywheel_trainer_policy_win_rate_threshold",
    "What the bound had to lie above for the newest candidate to pass.",
)
KL = Gauge("flywheel_trainer_policy_kl", "KL of the newest policy candidate to the reference.")
PPO = Gauge(
    "flywheel_trainer_ppo_metric",
    "The newest PPO stage's last iteration, by TRL/OpenRLHF metric name (objective/kl, ...).",
    ["name"],
)
PROMOTIONS = Counter("flywheel_trainer_promotions_total", "Versions promoted, by role.", ["role"])
ROLLBACKS = Counter("flywheel_trainer_rollbacks_total", "Automatic rollbacks, by role.", ["role"])
ACTIVE_RUN = Gauge("flywheel_trainer_run_active", "1 while this worker drives a run.")

# The watch (control worker): the canary, or the promoted policy against its parent.
CANARY_SHARE = Gauge(
    "flywheel_trainer_canary_share", "Share of API keys the policy canary serves (0: none)."
)
CANARY_AGE = Gauge(
    "flywheel_trainer_canary_age_seconds", "How long the policy canary has served (0: none)."
)
CANARY_MAX_WAIT = Gauge(
    "flywheel_trainer_canary_max_wait_seconds",
    "The longest a canary may serve undecided (the watch then decides it).",
)
CANARY_DECISIONS = Counter(
    "flywheel_trainer_canary_decisions_total",
    "Canaries decided by the watch, by decision (promote, roll_back).",
    ["decision"],
)
WATCH_VOTES = Gauge(
    "flywheel_trainer_watch_votes",
    "Thumbs the watch compared, by arm: 'version' (the canary or the newly promoted policy) "
    "and 'against' (the promoted policy or the parent).",
    ["arm"],
)
WATCH_BOUND = Gauge(
    "flywheel_trainer_watch_thumbs_up_bound",
    "The always-valid interval of each arm's thumbs-up rate, by arm and bound (low, high).",
    ["arm", "bound"],
)


def _create_series_at_start() -> None:
    # Until a run measures them the quality gauges read NaN (Grafana: no value), not a 0 that
    # looks like a measured 0% accuracy or win rate.
    quality = (RM_ACCURACY, RM_GATE_BOUND, RM_GATE_THRESHOLD, WIN_RATE, WIN_RATE_LOWER)
    for gauge in (*quality, WIN_RATE_THRESHOLD, KL):
        gauge.set(float("nan"))
    for arm in ("version", "against"):
        for bound in ("low", "high"):
            WATCH_BOUND.labels(arm, bound).set(float("nan"))
        WATCH_VOTES.labels(arm).set(0)
    for name in STANDARD_METRIC_NAMES:
        PPO.labels(name).set(float("nan"))
    # Counter series exist at 0 from start-up: increase() and rate() see nothing before a
    # series' first sample, so without this the first promotion or rollback would never show.
    for role in ROLES:
        PROMOTIONS.labels(role)
        ROLLBACKS.labels(role)
    for decision in ("promote", "roll_back"):
        CANARY_DECISIONS.labels(decision)


def create_run_series(stages: Iterable[str]) -> None:
    """Every (stage, outcome) series of RUNS at 0, so the first run that ends counts too
    (called by the pipeline, which owns the stage names)."""
    for stage in stages:
        for outcome in RUN_OUTCOMES:
            RUNS.labels(stage, outcome)


_create_series_at_start()
