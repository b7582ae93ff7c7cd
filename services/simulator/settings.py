"""The demo's sizes and settings in one place (environment prefix ``FLYWHEEL_DEMO_``).

Two presets: the default (the real base model, sized for at most 30 minutes on 2 CPU cores)
and ``quick`` (the tiny random model, a few minutes: CI and a first look). Any field can be
overridden from the environment; the trainer's own settings are passed to its processes as
``FLYWHEEL_TRAINER_*`` variables (``trainer_env``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# `quick`: the tiny random model; sizes for CI and a first look (a few minutes on 2 cores).
QUICK_SIZES = dict(
    data_dir=Path("data/demo-quick"),
    rounds=1,
    requests_per_round=60,
    pairs_per_run=100,
    heldout_percent=25,
    max_tokens=12,
    eval_prompts=10,
    eval_samples=2,
    ceiling_candidates=3,
    ppo_iterations=3,
    ppo_rollout_batch_size=4,
    ppo_minibatch_size=2,
    ppo_epochs=1,
    ppo_policy_lr=1e-5,
    rm_lr=2e-3,
    rm_epochs=3,
    rm_train_top_layers=0,
    # A tiny random model's answers are noise, so its RM and policy cannot really improve:
    # quick opens the RM and win-rate gates to show the machinery (the other checks stay).
    min_win_rate=0.0,
    rm_first_margin=-0.5,
    round_timeout_s=600.0,
)


class DemoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_DEMO_", extra="ignore")

    quick: bool = Field(False, description="The tiny model and small sizes (CI, a first look).")
    ablation: bool = Field(
        False, description="Also train the last run without ptx: the alignment-tax table."
    )
    data_dir: Path = Field(Path("data/demo"), description="The demo's stack: models, logs.")
    gateway_url: str = Field("http://127.0.0.1:8000", description="Where the personas chat.")
    feedback_url: str = Field("http://127.0.0.1:8001", description="Where they give feedback.")
    rounds: int = Field(2, ge=1, description="Rounds of traffic -> training -> evaluation.")
    requests_per_round: int = Field(
        80,
        ge=1,
        description="Most chat requests the training personas send in a round; traffic "
        "pauses earlier, as soon as the trainer starts a run.",
    )
    pairs_per_run: int = Field(
        150,
        ge=1,
        description="New comparison pairs that start a run (the trainer's MIN_NEW_PAIRS); a "
        "request gives about 4.4.",
    )
    requests_in_flight: int = Field(
        4,
        ge=1,
        description="Most chat requests at once across the personas: the engine's batch of 16 "
        "sequences holds 4 requests of 4 candidates, more would only queue.",
    )
    candidates: int = Field(4, ge=2, le=8, description="Answers per request (the paper: K=4-9).")
    max_tokens: int = Field(64, ge=1, description="Longest answer served to the personas.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of the traffic.")
    eval_prompts: int = Field(25, ge=1, description="Held-out prompts the judges compare on.")
    eval_samples: int = Field(
        4,
        ge=1,
        le=8,
        description="Answers of each policy per held-out prompt, sampled with the same seeds "
        "for both and judged pair by pair (one answer a prompt swings the measure by 0.1-0.15).",
    )
    ceiling_candidates: int = Field(
        7,
        ge=0,
        le=8,
        description="v0 samples per held-out prompt whose best, by the judges' mean utility, "
        "measures the re-weighting ceiling against v0 (0: not measured).",
    )
    include_spammer: bool = Field(True, description="The random-voting persona sends traffic.")
    seed: int = Field(0, description="Seeds the personas, prompts and sampling.")
    heldout_percent: int = Field(
        20, ge=1, le=50, description="Comparison groups the trainer holds out for its gates."
    )
    round_timeout_s: float = Field(1800.0, gt=0, description="Longest wait for a round's run.")

    # The trainer's sizes for the demo (passed on as FLYWHEEL_TRAINER_*).
    ppo_iterations: int = Field(5, ge=1, description="PPO iterations per run.")
    ppo_rollout_batch_size: int = Field(16, ge=1, description="Episodes per PPO iteration.")
    ppo_minibatch_size: int = Field(16, ge=1, description="Episodes per optimizer step.")
    ppo_epochs: int = Field(2, ge=1, description="Passes over each rollout batch.")
    ppo_policy_lr: float = Field(1e-5, gt=0, description="Policy learning rate.")
    ptx_coef: float = Field(
        0.1,
        ge=0,
        description="PPO-ptx weight of the pretraining loss. At 1.0 (the trainer's default) "
        "the 30 short ptx texts were learned by heart (their perplexity fell 39%) while the "
        "RL gradient of 16 episodes was drowned; 0.1 keeps the term without that.",
    )
    rm_lr: float = Field(3e-5, gt=0, description="Reward-model learning rate.")
    rm_epochs: int = Field(2, ge=1, description="Passes over each snapshot.")
    rm_train_top_layers: int = Field(
        8, ge=0, description="RM blocks trained (of 30 in SmolLM2-135M; 0: all)."
    )
    min_win_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The lower confidence bound of the policy gate's win rate (vs the promoted "
        "policy) must reach.",
    )
    rm_first_margin: float = Field(
        0.05, ge=-0.5, description="The first RM's held-out accuracy must reach 0.5 + this."
    )

    @model_validator(mode="after")
    def _quick_sizes(self) -> DemoSettings:
        """With ``quick``, the quick sizes for every field not set explicitly."""
        if self.quick:
            for name, value in QUICK_SIZES.items():
                if name not in self.model_fields_set:
                    setattr(self, name, value)
        return self

    def trainer_env(self) -> dict[str, str]:
        """The trainer's settings for this demo: beat starts a run once ``pairs_per_run``
        new comparison pairs are in, as production does."""
        return {
            "FLYWHEEL_TRAINER_CHECK_INTERVAL_S": "5",
            "FLYWHEEL_TRAINER_MIN_NEW_PAIRS": str(self.pairs_per_run),
            "FLYWHEEL_TRAINER_HELDOUT_PERCENT": str(self.heldout_percent),
            "FLYWHEEL_TRAINER_MIN_HELDOUT_GROUPS": "3",
            "FLYWHEEL_TRAINER_RM_LR": str(self.rm_lr),
            "FLYWHEEL_TRAINER_RM_EPOCHS": str(self.rm_epochs),
            "FLYWHEEL_TRAINER_RM_TRAIN_TOP_LAYERS": str(self.rm_train_top_layers),
            # The system prompt, a request and a 64-token answer fit in 128 tokens.
            "FLYWHEEL_TRAINER_RM_MAX_LENGTH": "128",
            "FLYWHEEL_TRAINER_PPO_ITERATIONS": str(self.ppo_iterations),
            "FLYWHEEL_TRAINER_PPO_ROLLOUT_BATCH_SIZE": str(self.ppo_rollout_batch_size),
            "FLYWHEEL_TRAINER_PPO_MINIBATCH_SIZE": str(self.ppo_minibatch_size),
            "FLYWHEEL_TRAINER_PPO_EPOCHS": str(self.ppo_epochs),
            # The personas are served answers cut at max_tokens and rank them: the RM has
            # learned how cut answers compare, so it scores PPO's cut rollouts too.
            "FLYWHEEL_TRAINER_PPO_SCORE_CUT_ANSWERS": "true",
            "FLYWHEEL_TRAINER_PPO_POLICY_LR": str(self.ppo_policy_lr),
            "FLYWHEEL_TRAINER_PPO_MAX_NEW_TOKENS": str(self.max_tokens),
            "FLYWHEEL_TRAINER_PPO_CHECKPOINT_EVERY": "4",
            "FLYWHEEL_TRAINER_PTX_COEF": str(self.ptx_coef),
            "FLYWHEEL_TRAINER_PTX_PER_EPISODE": "1",
            "FLYWHEEL_TRAINER_GATE_PROMPTS": "16",
            # A round's held-out split holds a handful of prompts: 4 answers each.
            "FLYWHEEL_TRAINER_GATE_SAMPLES_PER_PROMPT": "4",
            "FLYWHEEL_TRAINER_GATE_MAX_NEW_TOKENS": str(self.max_tokens),
            "FLYWHEEL_TRAINER_MIN_WIN_RATE": str(self.min_win_rate),
            "FLYWHEEL_TRAINER_RM_FIRST_MARGIN": str(self.rm_first_margin),
            "FLYWHEEL_TRAINER_BOOTSTRAP_SAMPLES": "500",
            # No canary: a round's traffic comes from a few simulated API keys over minutes,
            # too few keys for a 20 % share to mean anything and too few thumbs to decide
            # one (docs/trainer.md's canary table: hundreds of canary votes). A policy that
            # passes the gates serves everyone at once; the rollback watch still guards it.
            "FLYWHEEL_TRAINER_CANARY_SHARE": "0",
            "FLYWHEEL_TRAINER_DEVICE": "cpu",
            "FLYWHEEL_ENGINE_DEVICE": "cpu",
            "FLYWHEEL_REWARD_DEVICE": "cpu",
        }
