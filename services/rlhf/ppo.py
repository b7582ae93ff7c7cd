"""PPO and PPO-ptx against a reward model: step 3 of the method (Ouyang et al., 2022).

One iteration (:meth:`PPOTrainer.step`) on a batch of prompts:

1. Rollout: sample one answer per prompt from the policy (KV-cached, temperature 1).
2. Score: each answer as the reward service would score it (decoded to text and read where
   the RM was trained: services/rlhf/reward_reading.py); an answer cut at the length limit
   gets ``truncated_answer_score`` instead.
3. Freeze the targets: the policy's log-probabilities of the answer tokens (read
   off the generation pass, so no second policy forward), the reference's, the
   value model's predictions before each answer token, the per-token rewards
   ``-beta * (log pi - log pi_ref)`` plus the score on the last token, then GAE
   advantages (whitened) and returns.
4. Learn: ``ppo_epochs`` passes over shuffled minibatches; the policy minimises the
   clipped surrogate (+ ``ptx_coef`` times the language-modelling loss on plain
   pretraining texts for PPO-ptx), the value model the clipped value loss; each
   has its own Adam optimizer and gradient clipping.
5. Feed the measured KL (sum over an answer's tokens, mean over answers) to the KL
   controller, which sets beta for the next iteration.

Every model stays in eval mode (dropout off): the first minibatch's probability
ratio must be exactly 1, or the clip would act on dropout noise instead of on
policy change.

Reproducibility: the prompts of iteration i and every random draw inside it
(sampling, minibatch order, ptx texts) are functions of ``(seed, i)`` only, so a run
resumed from a checkpoint reaches the same weights as an uninterrupted one.

Not done here (deliberately, to keep the trainer small): LoRA adapters (TODO), the
paper's EMA of the policy weights (0.992), score normalisation, and trimming the
shared padding of each minibatch (every minibatch keeps the rollout's full width).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.rlhf.checkpoint import RunCheckpoints
from services.rlhf.config import option, to_dict
from services.rlhf.generation import SamplingConfig, generate
from services.rlhf.lm_loss import IGNORE_INDEX
from services.rlhf.loop import RESUME_NEUTRAL_FIELDS, StepReport, run_steps
from services.rlhf.optim import adamw
from services.rlhf.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
    policy_loss,
    ptx_loss,
    value_loss,
)
from services.rlhf.reward_reading import ends_its_turn, read_rewards, served_text
from services.rlhf.sequences import ResponseBatch, build_response_batch, response_logprobs
from services.rlhf.tokenization import Message, pad

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rollout:
    """One iteration's episodes, frozen before the PPO epochs: every tensor is (episodes,
    answer tokens), aligned with ``batch.response_mask``."""

    batch: ResponseBatch
    logprobs: torch.Tensor  # the sampling policy's log-probs of the answer tokens
    values: torch.Tensor  # the value model's estimates at rollout time
    advantages: torch.Tensor  # GAE (whitened when the config says so)
    returns: torch.Tensor  # advantages + values: the value model's targets
    scores: torch.Tensor  # (episodes,): the score of each answer (see PPOTrainer._scores)
    finished: torch.Tensor  # (episodes,) bool: the answer ended its turn (not cut)
    kl: torch.Tensor  # per-token log(pi / pi_ref) at rollout time
    beta: float  # the KL coefficient of this iteration


def _default_sampling() -> SamplingConfig:
    return SamplingConfig(max_new_tokens=64, do_sample=True, temperature=1.0)


@dataclass
class PPOConfig:
    policy_lr: float = option(
        1e-6,
        "Policy Adam learning rate. The paper used ~1e-5 scale and saw runs above 8e-6 diverge "
        "without ptx; small models on CPU may need more.",
    )
    value_lr: float = option(9e-6, "Value model Adam learning rate (the paper: 9e-6).")
    adam_betas: tuple[float, float] = option((0.9, 0.95), "Adam beta1, beta2 (the paper).")
    rollout_batch_size: int = option(
        32, "Prompts (episodes) per iteration. The paper: 512; 32 gives two minibatches on CPU."
    )
    minibatch_size: int = option(
        16,
        "Episodes per optimizer step; also the chunk size of generation and rollout passes. "
        "The paper: 64. On 2 CPU cores 16 ran 0.63 episodes/s against 0.56 for 8 and 0.42 "
        "for 4 (benchmarks/cpu_defaults.py).",
    )
    ppo_epochs: int = option(1, "Passes over each rollout batch (the paper: 1).")
    clip_range: float = option(0.2, "Policy ratio clip epsilon (the paper: 0.2).")
    clip_range_value: float = option(0.2, "How far a value may move from its rollout value.")
    gamma: float = option(1.0, "Discount; the paper uses none (1.0).")
    lam: float = option(0.95, "GAE lambda.")
    kl_beta: float = option(0.02, "KL penalty coefficient beta (initial if adaptive). Paper: 0.02.")
    adaptive_kl: bool = option(False, "Adapt beta towards kl_target (Ziegler et al.); paper: no.")
    kl_target: float = option(6.0, "Target KL per answer in nats (adaptive_kl only).")
    kl_horizon: int = option(10000, "Episodes over which beta adapts (adaptive_kl only).")
    ptx_coef: float = option(
        0.0,
        "PPO-ptx gamma: weight of the pretraining LM loss; 0 disables it. The paper: 27.8 "
        "(DeepSpeed-Chat found that unstable).",
    )
    ptx_per_episode: float = option(
        8.0,
        "Pretraining texts per RL episode in each minibatch (the paper: 8x as many pretraining "
        "examples as RL episodes). They run in chunks of minibatch_size, so memory stays bounded.",
    )
    ptx_max_length: int = option(256, "Pretraining texts are cut to this many tokens.")
    max_grad_norm: float = option(1.0, "Gradient norm clip, applied to policy and value apart.")
    whiten_advantages: bool = option(True, "Normalise advantages over the batch (mean 0, std 1).")
    truncated_answer_score: float | None = option(
        -1.0,
        "The score an answer cut at max_new_tokens gets instead of the RM's (the RM never saw an "
        "unfinished answer; a centred RM gives reference answers 0). None: the RM scores it.",
    )
    reward_max_length: int = option(
        1024, "Most tokens of prompt + answer the reward model reads (as the reward service)."
    )
    sampling: SamplingConfig = dataclasses.field(
        default_factory=_default_sampling,
        metadata={"help": "Rollout sampling (keep do_sample=True, temperature 1 as the paper)."},
    )
    seed: int = option(0, "Seeds prompt order and all sampling; with the iteration it fixes a run.")
    checkpoint_every: int = option(10, "Write a checkpoint every this many iterations.")

    def __post_init__(self) -> None:
        # from_dict (checkpoints, manifests) hands the nested config back as a plain dict.
        if isinstance(self.sampling, dict):
            self.sampling = SamplingConfig(**self.sampling)
        self.adam_betas = tuple(self.adam_betas)
        if self.rollout_batch_size < 1 or self.minibatch_size < 1 or self.ppo_epochs < 1:
            raise ValueError("batch sizes and ppo_epochs must be positive")


def _derived_seed(*parts: Any) -> int:
    """A stable 63-bit seed from parts (Python's hash() of str is salted per process)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _device(module: torch.nn.Module, fallback: torch.device | None = None) -> torch.device:
    """Where a module's weights live; ``fallback`` for one without weights (a rule-based RM)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else (fallback or torch.device("cpu"))


def _values(value_model: torch.nn.Module, batch: ResponseBatch) -> torch.Tensor:
    """(B, T) value of the state *before* each answer token, 0 on padding.

    Same alignment as :func:`response_logprobs`: column P + t - 1 has seen the prompt
    and answer tokens < t, which is the state in which token t is chosen.
    """
    values = value_model.values(batch.input_ids, batch.attention_mask, batch.position_ids)
    return values[:, batch.prompt_width - 1 : -1] * batch.response_mask


class PPOTrainer:
    """Trains ``policy`` to maximise ``reward_model``'s score while staying close to ``reference``.

    ``reference`` is a frozen copy of the starting (SFT) policy; ``reward_model`` is
    frozen; ``value_model`` (a :class:`~services.rlhf.heads.ScalarHeadModel`) is trained
    and, as in the paper, should start as a copy of the reward model: pass None to
    get ``copy.deepcopy(reward_model)``. Any reward module with
    ``rewards(input_ids, attention_mask)`` -> (batch,) works.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        reference: torch.nn.Module,
        value_model: torch.nn.Module | None,
        reward_model: torch.nn.Module,
        tokenizer,
        config: PPOConfig,
        ptx_texts: Sequence[str] | None = None,
        checkpoint_dir: Path | str | None = None,
    ) -> None:
        if config.ptx_coef > 0 and not ptx_texts:
            raise ValueError("ptx_coef > 0 needs ptx_texts")
        self.config = config
        self.tokenizer = tokenizer
        self.policy = policy.eval()
        self.reference = reference.eval().requires_grad_(False)
        self.reward_model = reward_model.eval().requires_grad_(False)
        if value_model is None:
            value_model = copy.deepcopy(reward_model)
        self.value_model = value_model.eval().requires_grad_(True)
        self.policy.requires_grad_(True)
        self.policy_optimizer = adamw(self.policy.parameters(), config.policy_lr, config.adam_betas)
        self.value_optimizer = adamw(
            self.value_model.parameters(), config.value_lr, config.adam_betas
        )
        self.kl_controller: FixedKLController | AdaptiveKLController = (
            AdaptiveKLController(config.kl_beta, config.kl_target, config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(config.kl_beta)
        )
        # Pretraining texts are tokenised once, as plain text (no chat template).
        self.ptx_ids: list[list[int]] = [
            tokenizer(t, truncation=True, max_length=config.ptx_max_length)["input_ids"]
            for t in (ptx_texts or [])
        ]
        self.ptx_ids = [ids for ids in self.ptx_ids if len(ids) >= 2]
        if config.ptx_coef > 0 and not self.ptx_ids:
            raise ValueError("ptx_texts hold no text of at least 2 tokens")
        # The prompts may be a stream, so a resume checks the config but not the data.
        self.checkpoints = RunCheckpoints(
            checkpoint_dir,
            {"policy": self.policy, "value_model": self.value_model},
            {
                "policy_optimizer": self.policy_optimizer,
                "value_optimizer": self.value_optimizer,
                "kl_controller": self.kl_controller,
            },
            to_dict(config),
            None,
            RESUME_NEUTRAL_FIELDS,
            config.checkpoint_every,
        )
        self.iteration = 0  # iterations completed (restored from a checkpoint by train)

    # ----- one iteration --------------------------------------------------------------------

    @torch.no_grad()
    def _rollout(self, prompts: Sequence[Sequence[Message]]) -> Rollout:
        """Sample answers and freeze everything the PPO epochs optimise against."""
        cfg, device = self.config, _device(self.policy)
        # The old log-probs come from the generation pass itself (no second policy forward).
        rollout = generate(
            self.policy,
            self.tokenizer,
            prompts,
            cfg.sampling,
            batch_size=cfg.minibatch_size,
            with_logprobs=True,
        )
        # One layout for the whole batch: every per-token tensor below is (B, T).
        batch = build_response_batch(
            rollout.prompt_ids, rollout.answer_ids, self.tokenizer.pad_token_id
        ).to(device)
        width = batch.response_mask.shape[1]
        logp = torch.tensor(
            [row + [0.0] * (width - len(row)) for row in rollout.logprobs], device=device
        )
        parts: dict[str, list[torch.Tensor]] = {"ref": [], "values": []}
        for start in range(0, len(prompts), cfg.minibatch_size):
            chunk = batch.rows(torch.arange(start, min(start + cfg.minibatch_size, len(prompts))))
            ref_chunk = chunk.to(_device(self.reference))
            parts["ref"].append(response_logprobs(self.reference, ref_chunk).to(device))
            parts["values"].append(_values(self.value_model, chunk.to(_device(self.value_model))))
        ref, values = (torch.cat(parts[k]).to(device) for k in ("ref", "values"))
        scores, finished = self._scores(prompts, rollout.answer_ids)
        scores, finished = scores.to(device), finished.to(device)
        mask = batch.response_mask
        beta = self.kl_controller.value
        # Rewards are built from the rollout-time log-probs, so the KL penalty is a fixed
        # part of the return for this iteration (it is not differentiated through).
        rewards, kl = kl_penalised_rewards(scores, logp, ref, mask, beta)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return Rollout(batch, logp, values, advantages, returns, scores, finished, kl, beta)

    def _scores(
        self, prompts: Sequence[Sequence[Message]], answer_ids: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, finished): the reward model's score of each answer, read as the reward
        service reads it (services/rlhf/reward_reading.py), or the fixed score of an answer cut
        at the length limit; and whether each answer ended its turn."""
        cfg = self.config
        finished = torch.tensor([ends_its_turn(self.tokenizer, ids) for ids in answer_ids])
        items = [
            (prompt, served_text(self.tokenizer, ids))
            for prompt, ids in zip(prompts, answer_ids, strict=True)
        ]
        scores = torch.tensor(
            read_rewards(
                self.reward_model,
                self.tokenizer,
                items,
                max_length=cfg.reward_max_length,
                batch_size=cfg.minibatch_size,
            )
        )
        if cfg.truncated_answer_score is not None:
            scores = torch.where(finished, scores, torch.tensor(cfg.truncated_answer_score))
        return scores, finished

    def _ptx_backward(self, episodes: int, generator: torch.Generator) -> float:
        """Draw ``ptx_per_episode`` pretraining texts per episode of the minibatch and add
        ``ptx_coef`` times their mean LM loss to the policy's gradient, chunk by chunk (each
        chunk weighted by its share of the texts, so the sum is the mean over all of them).
        Returns that mean loss."""
        cfg = self.config
        count = max(1, round(cfg.ptx_per_episode * episodes))
        picks = torch.randint(len(self.ptx_ids), (count,), generator=generator).tolist()
        device, total = _device(self.policy), 0.0
        for start in range(0, count, cfg.minibatch_size):
            chunk = picks[start : start + cfg.minibatch_size]
            ids, mask = pad([self.ptx_ids[i] for i in chunk], self.tokenizer.pad_token_id)
            labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
            logits = self.policy(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            lm_loss = ptx_loss(logits, labels.to(device))
            (cfg.ptx_coef * lm_loss * len(chunk) / count).backward()
            total += lm_loss.item() * len(chunk) / count
        return total

    def step(
        self, prompts: Sequence[Sequence[Message]], seed: int | None = None
    ) -> dict[str, float]:
        """One PPO iteration on ``prompts`` (one episode each); returns its statistics.

        With ``seed`` the torch RNG (sampling) and the minibatch/ptx draws are seeded
        from it, which makes the iteration reproducible. Stats: ``score`` (mean RM score),
        ``kl`` (per answer: sum over tokens, mean over answers, nats), ``reward`` (score minus
        beta * kl), ``beta`` (used this iteration), ``policy_loss``, ``value_loss``,
        ``policy_clip_fraction``, ``value_clip_fraction``, ``approx_kl`` (old vs new policy),
        ``ratio`` (mean probability ratio), ``entropy`` (per token, estimated from the samples),
        ``ptx_loss`` (0 without ptx), ``answer_length``, ``finished_fraction`` (answers that
        ended their turn), ``episodes_per_s``, ``seconds``. ``metric_names.standard_metrics``
        renames them as TRL and OpenRLHF log them.
        """
        cfg = self.config
        start_time = time.perf_counter()
        if seed is not None:
            torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(
            seed if seed is not None else int(torch.randint(2**62, (1,)))
        )
        r = self._rollout(prompts)
        batch, mask = r.batch, r.batch.response_mask
        use_ptx = cfg.ptx_coef > 0

        sums: dict[str, float] = {}
        n_updates = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(prompts), generator=generator)
            for begin in range(0, len(prompts), cfg.minibatch_size):
                idx = order[begin : begin + cfg.minibatch_size].to(mask.device)
                sub, sub_mask = batch.rows(idx), mask[idx]

                logp = response_logprobs(self.policy, sub)
                p_loss, p_stats = policy_loss(
                    logp, r.logprobs[idx], r.advantages[idx], sub_mask, cfg.clip_range
                )
                self.policy_optimizer.zero_grad(set_to_none=True)
                p_loss.backward()
                if use_ptx:
                    lm_loss = self._ptx_backward(len(idx), generator)
                    sums["ptx_loss"] = sums.get("ptx_loss", 0.0) + lm_loss
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.policy_optimizer.step()

                vm_device = _device(self.value_model)
                values = _values(self.value_model, sub.to(vm_device)).to(mask.device)
                v_loss, v_stats = value_loss(
                    values, r.values[idx], r.returns[idx], sub_mask, cfg.clip_range_value
                )
                self.value_optimizer.zero_grad(set_to_none=True)
                v_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.value_model.parameters(), cfg.max_grad_norm)
                self.value_optimizer.step()

                for name, value in (
                    ("policy_loss", p_loss),
                    ("policy_clip_fraction", p_stats["clip_fraction"]),
                    ("approx_kl", p_stats["approx_kl"]),
                    ("ratio", p_stats["ratio"]),
                    ("value_loss", v_loss),
                    ("value_clip_fraction", v_stats["clip_fraction"]),
                ):
                    sums[name] = sums.get(name, 0.0) + value.item()
                n_updates += 1

        # The episode's KL: sum over its tokens; the controller sees the batch mean.
        kl_per_episode = r.kl.sum(dim=1)
        mean_kl = kl_per_episode.mean().item()
        self.kl_controller.update(mean_kl, n_steps=len(prompts))
        elapsed = time.perf_counter() - start_time
        stats = {name: total / n_updates for name, total in sums.items()}
        stats.update(
            score=r.scores.mean().item(),
            kl=mean_kl,
            reward=(r.scores - r.beta * kl_per_episode).mean().item(),
            beta=r.beta,
            answer_length=mask.sum(dim=1).mean().item(),
            finished_fraction=r.finished.float().mean().item(),
            # A sample estimate of the policy's per-token entropy: -E[log pi(token)].
            entropy=-masked_mean(r.logprobs, mask).item(),
            advantage_mean=masked_mean(r.advantages, mask).item(),
            episodes_per_s=len(prompts) / elapsed,
            seconds=elapsed,
        )
        if not use_ptx:
            stats["ptx_loss"] = 0.0
        return stats

    # ----- the loop ---------------------------------------------------------------------------

    def _prompt_batches(
        self, prompts: Sequence[Sequence[Message]] | Iterable[Sequence[Message]], skip: int
    ) -> Iterator[list[Sequence[Message]]]:
        """Batches from iteration ``skip`` on.

        A list is reshuffled every epoch by ``(seed, epoch)``, so batch i is the same
        whether or not the run was resumed. A plain iterable is read in order and the
        first ``skip`` batches are consumed and dropped (it must replay the same stream).
        """
        size = self.config.rollout_batch_size
        if isinstance(prompts, Sequence):
            if not prompts:
                raise ValueError("no prompts")
            n, orders = len(prompts), {}
            for iteration in itertools.count(skip):
                picks = []
                for position in range(iteration * size, (iteration + 1) * size):
                    epoch = position // n
                    if epoch not in orders:
                        orders = {epoch: list(range(n))}  # keep only the current epoch's order
                        random.Random(_derived_seed(self.config.seed, "epoch", epoch)).shuffle(
                            orders[epoch]
                        )
                    picks.append(prompts[orders[epoch][position % n]])
                yield picks
        else:
            stream = iter(prompts)
            for _ in itertools.islice(stream, skip * size):
                pass
            while batch := list(itertools.islice(stream, size)):
                yield batch

    def _state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "prompts_consumed": self.iteration * self.config.rollout_batch_size,
        }

    def save(self) -> None:
        if self.checkpoints.folder is None:
            raise ValueError("no checkpoint_dir was given")
        self.checkpoints.save(self.iteration, self._state)

    def load(self) -> bool:
        """Restore the latest checkpoint, if there is one; True when restored.

        A checkpoint of another config is refused before anything is restored.
        """
        extra = self.checkpoints.restore()
        if extra is None:
            return False
        self.iteration = int(extra["iteration"])
        return True

    def train(
        self,
        prompts: Sequence[Sequence[Message]] | Iterable[Sequence[Message]],
        iterations: int,
        progress: bool = True,
        on_iteration: Callable[[int, dict[str, float]], None] | None = None,
    ) -> list[dict[str, float]]:
        """Run until ``iterations`` iterations are done in total, resuming from the checkpoint.

        Returns the statistics of the iterations run by this call; ``on_iteration(i, stats)``
        sees each as it finishes (a service logs them).
        """
        if self.load():
            log.info("resumed from %s at iteration %d", self.checkpoints.folder, self.iteration)
        history: list[dict[str, float]] = []
        batches = self._prompt_batches(prompts, skip=self.iteration)

        def one_iteration(iteration: int) -> StepReport | None:
            batch = next(batches, None)
            if batch is None:  # the prompt stream ended
                return None
            stats = self.step(batch, seed=_derived_seed(self.config.seed, iteration))
            self.iteration = iteration + 1
            history.append(stats)
            if on_iteration is not None:
                on_iteration(iteration, stats)
            shown = ("score", "kl", "beta", "policy_loss", "value_loss")
            return StepReport({name: stats[name] for name in shown}, items=len(batch))

        run_steps(
            "ppo",
            start=self.iteration,
            total=iterations,
            run_step=one_iteration,
            checkpoints=self.checkpoints,
            state=self._state,
            progress=progress,
            logger=log,
            unit="iteration",
            items_name="episodes",
        )
        return history
