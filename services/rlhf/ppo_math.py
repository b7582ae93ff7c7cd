"""The numerical core of PPO-ptx (Ouyang et al., 2022) as pure functions on tensors.

The trainer owns the models, the optimiser and the loop; everything here is
arithmetic on tensors, so each piece can be checked against numbers worked by hand.

Conventions, shared by every function below:

* Per-token tensors are ``(batch, T)`` over the RESPONSE tokens only (the prompt
  is not part of the episode's actions).
* ``mask`` is ``(batch, T)``, 1.0 at real response tokens and 0.0 at the padding
  after the end of each response (right padding). Every reduction is masked, and
  every per-token output is 0 at masked positions.

One PPO step, in the order the trainer uses these pieces::

    logprobs     = logprobs_from_logits(policy_logits[:, :-1], ids[:, 1:])  # then cut to T
    rewards, kl  = kl_penalised_rewards(score, logprobs, ref_logprobs, mask, kl_ctl.value)
    adv, returns = gae(rewards, values, mask)
    adv          = masked_whiten(adv, mask)
    # per minibatch, two separate models and optimisers (the value model is not a head on
    # the policy, so there is no vf_coef balancing one summed loss):
    policy step on  policy_loss(...)[0] + ptx_coef * ptx_loss(...)
    value step on   value_loss(...)[0]
    kl_ctl.update(mean KL per episode, n_steps=batch size)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from services.rlhf.lm_loss import next_token_nll

WHITEN_EPS = 1e-8


# --- masked statistics -------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where ``mask`` is set: ``sum(x * m) / sum(m)``.

    With ``dim=None`` the mean is over the whole batch (every real token weighs the
    same); with ``dim`` it is per slice. A slice with no real positions gives 0, not NaN.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1e-8)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1e-8)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the real positions: ``mean_m((x - mean_m(x))^2)``.

    ``unbiased`` applies Bessel's correction ``n / (n - 1)``, n = number of real positions.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n < 2:
            raise ValueError("the unbiased variance needs at least 2 real positions")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Advantage whitening: ``(x - mean) / sqrt(var + 1e-8)`` over the real positions.

    Statistics are taken over the whole batch (not per row), so an answer that is
    better than the batch's others keeps a positive advantage everywhere. With
    ``shift_mean=False`` only the scale changes: ``(x - mean) / std + mean``.
    Masked positions stay 0. With a single real position only the mean is removed.
    """
    mean = masked_mean(x, mask)
    if mask.to(x.dtype).sum() < 2:
        # One real position (a batch of one one-token answer) has no spread to divide by.
        return ((x - mean) if shift_mean else x) * mask.to(x.dtype)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


# --- rewards and the KL coefficient ------------------------------------------------------------


def kl_penalised_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards for the paper's ``r(x, y) - beta * log(pi_RL(y|x) / pi_SFT(y|x))``.

    The log ratio of a whole answer is the sum of per-token log ratios, so the KL
    term is paid token by token::

        kl_t      = log pi_RL(y_t | ...) - log pi_SFT(y_t | ...)
        reward_t  = -beta * kl_t  +  [t == last real token] * score

    ``score`` is the reward model's scalar per answer, shape ``(batch,)``. The
    per-token ``kl_t`` is a one-sample estimate of KL(pi_RL || pi_SFT) at that step
    (its expectation under pi_RL is the true KL); summed over a row it estimates
    the answer's KL. Returns ``(rewards, kl)``, both ``(batch, T)`` and 0 at padding.
    A row with no real token gets no reward at all.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    # Index of the last real token per row; robust to any 0/1 mask, not only prefixes.
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask).argmax(dim=1)
    at_last = F.one_hot(last, num_classes=mask.shape[1]).to(rewards.dtype)
    rewards = (rewards + at_last * score.to(rewards.dtype).unsqueeze(1)) * mask
    return rewards, kl


class FixedKLController:
    """A constant KL coefficient ``beta`` (the paper: beta = 0.02)."""

    def __init__(self, beta: float) -> None:
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt; present so the trainer can treat both controllers alike."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller that steers the measured KL towards ``target`` (Ziegler et al. 2019).

    After a batch of ``n_steps`` episodes with mean KL ``current_kl``::

        error = clip(current_kl / target - 1, -0.2, 0.2)
        beta  = beta * (1 + error * n_steps / horizon)

    KL above target raises beta (a stronger pull back to the SFT model), below it
    lowers beta. The clip bounds the change per batch, so one outlier batch cannot
    swing beta; ``horizon`` (in episodes) sets how fast beta moves.
    """

    def __init__(self, init_beta: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError("target and horizon must be positive")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])


# --- advantages --------------------------------------------------------------------------------


@torch.no_grad()  # advantages and returns are fixed targets for the whole PPO epoch
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, computed backwards over the response tokens.

    With ``m_{t+1}`` = 1 if token t+1 is real, else 0 (the episode ended at t)::

        delta_t = r_t + gamma * m_{t+1} * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * m_{t+1} * A_{t+1}
        R_t     = A_t + V_t                  (the value function's target)

    so after the last real token nothing is bootstrapped: the episode's value is 0.
    ``gamma`` defaults to 1 (the paper uses no discount). Returns ``(advantages,
    returns)``, both 0 at masked positions (whatever ``rewards``/``values`` hold there).
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        # next_* were already zeroed where token t+1 is padding (values were masked above,
        # advantages are masked below), so this line is the formula with m_{t+1} folded in.
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


# --- losses ------------------------------------------------------------------------------------


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, as a loss to minimise::

        ratio_t = exp(logprobs_t - old_logprobs_t)
        loss    = -mean_m( min(ratio_t * A_t, clip(ratio_t, 1 - eps, 1 + eps) * A_t) )

    The min makes the objective a pessimistic bound: moving the ratio beyond
    ``1 +/- eps`` in the direction the advantage favours earns nothing (zero gradient),
    while moves that hurt are always counted.

    Stats (detached 0-dim tensors, so logging does not force a device sync):

    * ``clip_fraction``: share of real tokens where the clipped term is the one the
      min picks (strictly smaller), i.e. tokens that get no gradient.
    * ``ratio``: the mean probability ratio (1 on the first minibatch of an iteration).
    * ``approx_kl``: ``mean_m((ratio - 1) - log ratio)``. Under samples from the old
      policy E[ratio] = 1, so this is an unbiased estimate of KL(pi_old || pi_new);
      every term is >= 0 (since e^x >= 1 + x), so it is lower-variance than
      ``-log ratio`` and never negative.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped < unclipped).to(ratio.dtype), mask),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss::

        v_clip = old_values + clip(values - old_values, -eps, eps)
        loss   = 0.5 * mean_m( max((values - R)^2, (v_clip - R)^2) )

    The value head may move at most ``eps`` from its rollout-time prediction before
    the loss stops rewarding it, the value-side twin of the policy clip.
    Stats: ``clip_fraction``, the share of real tokens where the clipped error is the
    larger one (strictly), i.e. tokens that get no gradient.
    """
    values_clipped = old_values + torch.clamp(
        values - old_values, -clip_range_value, clip_range_value
    )
    error = (values - returns) ** 2
    error_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, error_clipped), mask)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((error_clipped > error).to(values.dtype), mask)}
    return loss, stats


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[token]`` per position: ``logits_t[y_t] - logsumexp(logits_t)``.

    ``logits`` is ``(..., V)`` and ``tokens`` is ``(...)``; position t of ``logits`` scores
    ``tokens[t]``, so for a causal LM pass ``logits[:, :-1]`` with ``tokens[:, 1:]``.
    The softmax runs in fp32 (bf16 logits lose the small differences that PPO's ratio
    depends on); the result is fp32.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def ptx_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The PPO-ptx pretraining term: mean next-token negative log-likelihood.

    ``logits`` is ``(batch, L, V)`` and ``labels`` ``(batch, L)`` (usually the input ids,
    with ``-100`` where no loss is wanted, e.g. padding). Position t predicts token t+1::

        ptx_loss = -(1/N) * sum over t with labels[t+1] != -100 of log pi(labels[t+1] | x_<=t)

    The paper maximises ``gamma * E_pretrain[log pi_RL(x)]``; minimising
    ``gamma * ptx_loss`` is the same thing, so the trainer adds ``gamma * ptx_loss`` to
    the PPO loss. With no label to score it returns 0 (still attached to the graph).
    """
    total, count = next_token_nll(logits, labels)
    return total / max(count, 1)
