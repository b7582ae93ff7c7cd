"""The trainer's settings (environment prefix ``FLYWHEEL_TRAINER_``).

Thresholds of the trigger and the gates, the Celery layout, and where runs keep their data.
The RL hyper-parameters live in services/rlhf's configs; only what an operator tunes per
deployment is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_TRAINER_", extra="ignore")

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the run store. Unset: SQLite at <data_dir>/trainer.sqlite3; "
        "in a cluster: postgresql+psycopg://user:password@host/db.",
    )
    feedback_grpc_target: str = Field(
        "127.0.0.1:50051", description="The feedback service's gRPC address (Stats, exports)."
    )
    broker_url: str | None = Field(
        None, description="Celery broker and result backend. Unset: FLYWHEEL_REDIS_URL."
    )
    control_queue: str = Field(
        "control", description="Celery queue of the quick tasks (checks, status, cancel, watch)."
    )
    train_queue: str = Field("train", description="Celery queue of the tasks that drive runs.")

    # --- the trigger -------------------------------------------------------------------------
    check_interval_s: float = Field(
        60.0, gt=0, description="How often beat asks whether enough new comparisons arrived."
    )
    min_new_pairs: int = Field(
        500,
        ge=1,
        description="New comparison pairs since the last trained snapshot that start "
        "a run at once.",
    )
    max_wait_s: float = Field(
        24 * 3600.0,
        gt=0,
        description="After this long since the last run (or since the first check), a run "
        "starts with fewer pairs, if at least min_pairs_after_wait arrived.",
    )
    min_pairs_after_wait: int = Field(
        50, ge=1, description="The least new pairs a run started by max_wait_s trains on."
    )

    # --- the data ----------------------------------------------------------------------------
    heldout_percent: int = Field(
        10,
        ge=1,
        le=50,
        description="Share of comparison groups held out (chosen by comparison id, so a group "
        "is held out in every run) for the RM gate and the policy gate's prompts.",
    )
    min_heldout_groups: int = Field(
        5, ge=1, description="Fewer held-out groups than this: the run stops, the gates need data."
    )

    # --- the reward model and its gate -------------------------------------------------------
    rm_epochs: int = Field(1, ge=1, description="Passes over the snapshot (the paper: 1).")
    rm_lr: float = Field(9e-6, gt=0, description="Peak learning rate of RM training.")
    rm_prompts_per_batch: int = Field(8, ge=1, description="Comparison groups per RM step.")
    rm_max_length: int = Field(512, ge=16, description="Most tokens of prompt + answer.")
    rm_train_top_layers: int = Field(
        0, ge=0, description="Train only the RM's top N transformer blocks; 0: all of them."
    )
    rm_gate_tolerance: float = Field(
        0.05,
        ge=0,
        description="The lower confidence bound (gate_alpha) of the new RM's held-out accuracy "
        "gain over the promoted RM, on the same held-out groups, must reach minus this.",
    )
    rm_first_margin: float = Field(
        0.05,
        ge=-0.5,
        description="The lower confidence bound of the first RM's held-out accuracy must reach "
        "0.5 + this (negative only for demos on a random model, whose answers carry no "
        "learnable taste).",
    )

    # --- PPO and the policy gate -------------------------------------------------------------
    ppo_iterations: int = Field(20, ge=1, description="PPO iterations per run.")
    ppo_rollout_batch_size: int = Field(16, ge=1, description="Episodes per PPO iteration.")
    ppo_minibatch_size: int = Field(8, ge=1, description="Episodes per optimizer step.")
    ppo_policy_lr: float = Field(1e-6, gt=0, description="Policy learning rate.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch (the paper: 1).")
    ppo_kl_beta: float = Field(0.02, ge=0, description="KL penalty coefficient (the paper's).")
    ppo_max_new_tokens: int = Field(64, ge=1, description="Longest rollout answer.")
    ppo_score_cut_answers: bool = Field(
        False,
        description="Let the RM score rollouts cut at ppo_max_new_tokens. Off: they score -1, "
        "for an RM that never saw a cut answer; on where users are served answers cut at the "
        "same length and rank them, so the RM learned how cut answers compare.",
    )
    ppo_checkpoint_every: int = Field(
        5, ge=1, description="PPO iterations between checkpoints (what a crash can lose)."
    )
    ptx_coef: float = Field(
        1.0,
        ge=0,
        description="PPO-ptx weight of the pretraining loss (0: plain PPO). The paper's 27.8 "
        "was unstable at this scale in DeepSpeed-Chat's experience; 1.0 keeps the term.",
    )
    ptx_per_episode: float = Field(
        8.0, ge=0, description="Pretraining texts per RL episode (the paper's ratio: 8)."
    )
    reference_version: str = Field(
        "", description="The fixed reference policy of the KL term; empty: the first (v0)."
    )
    # The policy gate's sizes and error rates: docs/trainer.md's table gives the false
    # promotion rate and the power these give (tests/trainer/test_gate_error_rates.py).
    gate_prompts: int = Field(64, ge=1, description="Most held-out prompts the policy gate uses.")
    gate_max_new_tokens: int = Field(64, ge=1, description="Answer length in the policy gate.")
    gate_samples_per_prompt: int = Field(
        2, ge=1, description="Answers per held-out prompt and policy in the policy gate."
    )
    gate_alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Each gate decides on the one-sided (1 - alpha) lower confidence bound of "
        "its statistic: a candidate exactly as good as the promoted one passes about this often.",
    )
    min_win_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The lower confidence bound of the candidate's win rate against the "
        "promoted policy, judged on held-out prompts, must lie above this (ties count half; "
        "0.5: better than the promoted policy, with confidence 1 - gate_alpha).",
    )
    max_kl: float = Field(
        20.0, gt=0, description="Most KL to the reference per answer (nats, sampled estimate)."
    )
    max_tax_perplexity_ratio: float = Field(
        1.25,
        ge=1,
        description="The alignment tax: the candidate's perplexity on general text no stage "
        "trains on (services/trainer/data/tax.txt) over the reference policy's may not exceed "
        "this.",
    )
    min_end_of_turn_ratio: float = Field(
        0.5,
        ge=0,
        description="The candidate's share of answers that end their turn may not fall below "
        "this fraction of the reference policy's (a policy that never stops has collapsed).",
    )
    min_length_ratio: float = Field(
        0.3,
        ge=0,
        description="Mean answer length may not fall below this fraction of the reference's.",
    )
    min_distinct_ratio: float = Field(
        0.5,
        ge=0,
        description="Share of distinct answers may not fall below this fraction of the "
        "reference policy's (mode collapse).",
    )
    bootstrap_samples: int = Field(
        1000, ge=100, description="Resamples of the gates' bootstrap confidence bounds."
    )

    # --- safety ------------------------------------------------------------------------------
    lease_ttl_s: float = Field(
        60.0,
        gt=0,
        description="A run's lease expires this long after its last heartbeat; then the "
        "reconciler may hand the run to another worker.",
    )
    heartbeat_s: float = Field(10.0, gt=0, description="How often a run renews its lease.")
    stage_time_limit_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="Longest a heavy stage may run, with either executor (a Job's "
        "activeDeadlineSeconds); past it the stage is stopped and the run fails, not retried.",
    )
    stage_retries: int = Field(
        2,
        ge=0,
        description="Times a failed stage (a crash, not a gate) is retried from its "
        "checkpoint before the run fails.",
    )
    # --- the watch: canary and rollback ----------------------------------------------------
    # A policy that passes the gates first serves canary_share of the API keys beside the
    # promoted one; the watch decides it with an always-valid test on both versions' thumbs
    # over the same period (services/trainer/sequential.py), and after a full promotion
    # watches it against its parent with the same test. docs/trainer.md's tables give the
    # error rates and the votes they need.
    canary_share: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of API keys a new policy serves as a canary before it serves "
        "everyone; 0: promote at once (then only the rollback watch guards it).",
    )
    canary_margin: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Promote a canary early once its thumbs-up rate is shown above the "
        "promoted version's minus this.",
    )
    canary_max_wait_s: float = Field(
        24 * 3600.0,
        gt=0,
        description="Longest a canary serves undecided; then canary_at_longest_wait applies.",
    )
    canary_at_longest_wait: Literal["promote", "roll_back"] = Field(
        "promote",
        description="What an undecided canary gets at the longest wait: 'promote' (not shown "
        "worse, and the gates showed it better offline) or 'roll_back' (shown nothing live).",
    )
    rollback_alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Chance that a version as good as the one it is compared with is ever "
        "rolled back (as a canary or after its promotion), however often the watch looks; also "
        "the chance that a canary worse by more than canary_margin is promoted early.",
    )
    rollback_margin: float = Field(
        0.0,
        ge=0,
        description="Roll back a canary or a promoted policy only when its thumbs-up rate is "
        "shown below the other version's by more than this.",
    )
    rollback_planned_votes: int = Field(
        300,
        ge=10,
        description="Votes per version near which the test is most sensitive (it stays valid "
        "at every count).",
    )
    watch_interval_s: float = Field(
        120.0, gt=0, description="How often the watch decides the canary or looks for a rollback."
    )

    # --- where it runs -----------------------------------------------------------------------
    executor: Literal["local", "kubernetes"] = Field(
        "local",
        description="'local': each heavy stage in a fresh subprocess of the train worker; "
        "'kubernetes': each as a Job (FLYWHEEL_TRAINER_K8S_* settings).",
    )
    device: str = Field("auto", description="Training device: 'auto' (CUDA if present), 'cpu'.")
    runs_dir: Path | None = Field(
        None, description="Datasets, checkpoints and stage results. Unset: <data_dir>/trainer."
    )
    metrics_host: str = Field("127.0.0.1", description="Address /metrics listens on.")
    control_metrics_port: int = Field(9053, description="/metrics of the control worker.")
    train_metrics_port: int = Field(9054, description="/metrics of the train worker.")
    beat_metrics_port: int = Field(9055, description="/metrics of beat (its liveness).")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'trainer.sqlite3'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def resolved_runs_dir(self) -> Path:
        return self.runs_dir or self.data_dir / "trainer"
