"""PPO-ptx arithmetic against numbers worked by hand (the working is in the comments)."""

import math

import pytest
import torch
import torch.nn.functional as F

from services.rlhf.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_penalised_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    ptx_loss,
    value_loss,
)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def close(actual: torch.Tensor, expected, atol: float = 1e-9) -> bool:
    return torch.allclose(
        actual.double(), torch.as_tensor(expected, dtype=torch.float64), atol=atol
    )


# Two rows: row 0 has 3 real tokens, row 1 has 2 real tokens and 2 pads (99 = garbage).
X = t([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 99.0, 99.0]])
X_MASK = t([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_masked_statistics():
    # Real values 1, 2, 3, 4, 5: mean 15 / 5 = 3.
    assert close(masked_mean(X, X_MASK), 3.0)
    # Per row: (1 + 2 + 3) / 3 = 2 and (4 + 5) / 2 = 4.5.
    assert close(masked_mean(X, X_MASK, dim=1), [2.0, 4.5])
    # Squared deviations 4, 1, 0, 1, 4 sum to 10: biased 10 / 5 = 2, unbiased 10 / 4 = 2.5.
    assert close(masked_var(X, X_MASK, unbiased=False), 2.0)
    assert close(masked_var(X, X_MASK), 2.5)
    # A row with no real token averages to 0, not NaN.
    assert close(masked_mean(X, t([[1, 0, 0, 0], [0, 0, 0, 0]]), dim=1), [1.0, 0.0])


def test_whitening_gives_mean_0_var_1_and_keeps_pads_at_0():
    white = masked_whiten(X, X_MASK)
    # (x - 3) / sqrt(2.5 + 1e-8): e.g. 1 -> -2 / 1.5811388 = -1.2649111.
    s = math.sqrt(2.5 + 1e-8)
    assert close(white, [[-2 / s, -1 / s, 0.0, 0.0], [1 / s, 2 / s, 0.0, 0.0]])
    assert close(masked_mean(white, X_MASK), 0.0)
    assert close(masked_var(white, X_MASK), 1.0, atol=1e-8)
    # shift_mean=False rescales only: (x - 3) / s + 3, pads still 0.
    kept = masked_whiten(X, X_MASK, shift_mean=False)
    assert close(kept, [[3 - 2 / s, 3 - 1 / s, 3.0, 0.0], [3 + 1 / s, 3 + 2 / s, 0.0, 0.0]])


def test_kl_penalised_rewards_put_the_score_on_the_last_real_token():
    beta = 0.1
    score = t([2.0, -1.0])
    logprobs = t([[-1.0, -2.0, -0.5], [-0.2, -3.0, -9.0]])  # row 1 pads its last position
    ref_logprobs = t([[-1.5, -2.0, -1.0], [-0.4, -2.0, -1.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalised_rewards(score, logprobs, ref_logprobs, mask, beta)
    # kl = logprobs - ref:  row 0: -1+1.5 = 0.5, -2+2 = 0, -0.5+1 = 0.5
    #                       row 1: -0.2+0.4 = 0.2, -3+2 = -1, pad -> 0
    assert close(kl, [[0.5, 0.0, 0.5], [0.2, -1.0, 0.0]])
    # rewards = -0.1 * kl, plus the score at the last real token:
    #   row 0: -0.05, 0, -0.05 + 2 = 1.95
    #   row 1: -0.02, 0.1 + (-1) = -0.9 (position 1 is its last real token), pad 0
    assert close(rewards, [[-0.05, 0.0, 1.95], [-0.02, -0.9, 0.0]])


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.02)
    ctl.update(current_kl=100.0, n_steps=512)
    assert ctl.value == 0.02
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.02


@pytest.mark.parametrize(
    ("current_kl", "n_steps", "expected"),
    [
        # 9 / 6 - 1 = +0.5, clipped to +0.2: 0.1 * (1 + 0.2 * 512 / 10000) = 0.1 * 1.01024
        (9.0, 512, 0.101024),
        # 6.6 / 6 - 1 = +0.1 (inside the clip): 0.1 * (1 + 0.1 * 1000 / 10000) = 0.1 * 1.01
        (6.6, 1000, 0.101),
        # 5.4 / 6 - 1 = -0.1: 0.1 * (1 - 0.1 * 1000 / 10000) = 0.1 * 0.99
        (5.4, 1000, 0.099),
        # 0 / 6 - 1 = -1, clipped to -0.2: 0.1 * (1 - 0.2 * 1000 / 10000) = 0.1 * 0.98
        (0.0, 1000, 0.098),
        # on target: error 0, beta unchanged
        (6.0, 1000, 0.1),
    ],
)
def test_adaptive_controller_steers_towards_the_target(current_kl, n_steps, expected):
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl, n_steps)
    assert ctl.value == pytest.approx(expected, rel=1e-12)


def test_adaptive_controller_state_round_trips():
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    ctl.update(9.0, 512)
    resumed = AdaptiveKLController(init_beta=5.0, target=1.0, horizon=7)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.state_dict() == ctl.state_dict()
    ctl.update(3.0, 512)
    resumed.update(3.0, 512)
    assert resumed.value == ctl.value


def test_gae_three_steps_by_hand():
    # gamma = 1, lam = 0.9; r = (0.1, -0.2, 1.0), V = (0.5, 0.4, 0.8); nothing after step 2.
    #   delta_2 = 1.0 + 0 - 0.8          =  0.2
    #   delta_1 = -0.2 + 0.8 - 0.4       =  0.2
    #   delta_0 = 0.1 + 0.4 - 0.5        =  0.0
    #   A_2 = 0.2
    #   A_1 = 0.2 + 0.9 * 0.2            =  0.38
    #   A_0 = 0.0 + 0.9 * 0.38           =  0.342
    #   R = A + V = (0.842, 0.78, 1.0)
    rewards, values = t([[0.1, -0.2, 1.0]]), t([[0.5, 0.4, 0.8]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.9)
    assert close(adv, [[0.342, 0.38, 0.2]])
    assert close(ret, [[0.842, 0.78, 1.0]])


def test_gae_with_lambda_1_returns_the_discounted_return():
    # gamma = 0.5, lam = 1, same r and V:
    #   delta_2 = 1.0 - 0.8                  =  0.2
    #   delta_1 = -0.2 + 0.5 * 0.8 - 0.4     = -0.2
    #   delta_0 = 0.1 + 0.5 * 0.4 - 0.5      = -0.2
    #   A_2 = 0.2;  A_1 = -0.2 + 0.5 * 0.2 = -0.1;  A_0 = -0.2 + 0.5 * -0.1 = -0.25
    #   R = (0.25, 0.3, 1.0) = Monte Carlo returns, e.g. R_0 = 0.1 - 0.5*0.2 + 0.25*1.0 = 0.25
    rewards, values = t([[0.1, -0.2, 1.0]]), t([[0.5, 0.4, 0.8]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=1.0)
    assert close(adv, [[-0.25, -0.1, 0.2]])
    assert close(ret, [[0.25, 0.3, 1.0]])


def test_gae_does_not_bootstrap_past_the_end_of_a_padded_row():
    # Row 0: the three-step trajectory above plus one pad (garbage 9 / 7 there).
    # Row 1: two real steps, r = (0.5, 1.0), V = (0.2, 0.3), then pads holding garbage;
    #   gamma = 1, lam = 0.9; the episode ends at step 1, so V_2 = 7 must NOT be used:
    #   delta_1 = 1.0 + 0 - 0.3    = 0.7
    #   delta_0 = 0.5 + 0.3 - 0.2  = 0.6
    #   A_1 = 0.7;  A_0 = 0.6 + 0.9 * 0.7 = 1.23;  R = (1.43, 1.0)
    rewards = t([[0.1, -0.2, 1.0, 9.0], [0.5, 1.0, 9.0, 9.0]])
    values = t([[0.5, 0.4, 0.8, 7.0], [0.2, 0.3, 7.0, 7.0]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.9)
    assert close(adv, [[0.342, 0.38, 0.2, 0.0], [1.23, 0.7, 0.0, 0.0]])
    assert close(ret, [[0.842, 0.78, 1.0, 0.0], [1.43, 1.0, 0.0, 0.0]])


def test_clipped_policy_loss():
    # eps = 0.2. Three real tokens and one pad:
    #   token 0: A = +1, ratio 1.5 -> min(1.5 * 1, 1.2 * 1)     =  1.2  (clipped term wins)
    #   token 1: A = -1, ratio 1.5 -> min(-1.5, -1.2)           = -1.5  (unclipped: pessimistic)
    #   token 2: A = +2, ratio 0.9 -> min(1.8, 1.8)             =  1.8  (inside the range)
    #   loss = -(1.2 - 1.5 + 1.8) / 3 = -0.5;  clip_fraction = 1 / 3
    ratios = t([[1.5, 1.5, 0.9, 50.0]])
    old = t([[-1.0, -2.0, -0.5, -3.0]])
    logprobs = (old + ratios.log()).requires_grad_()
    advantages = t([[1.0, -1.0, 2.0, 100.0]])
    mask = t([[1, 1, 1, 0]])
    loss, stats = policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    assert close(loss, -0.5)
    assert close(stats["clip_fraction"], 1 / 3)
    # approx_kl = mean((ratio - 1) - log ratio):
    #   1.5: 0.5 - 0.4054651 = 0.0945349 (twice);  0.9: -0.1 + 0.1053605 = 0.0053605
    #   (0.0945349 * 2 + 0.0053605) / 3 = 0.0648101
    assert close(stats["approx_kl"], 0.0648101, atol=1e-7)
    # d loss / d logprob_t = -(1/3) * A_t * ratio_t where the unclipped term is used, else 0:
    #   token 0: 0;  token 1: -(1/3) * -1 * 1.5 = 0.5;  token 2: -(1/3) * 2 * 0.9 = -0.6;  pad: 0
    loss.backward()
    assert close(logprobs.grad, [[0.0, 0.5, -0.6, 0.0]])


def test_clipped_value_loss():
    # eps = 0.2, v_clip = old + clip(v - old, -0.2, 0.2):
    #   token 0: old 1.0, v 1.5, R 2.0 -> v_clip 1.2; (1.5-2)^2 = 0.25, (1.2-2)^2 = 0.64 -> 0.64
    #   token 1: old 1.0, v 1.5, R 1.0 -> v_clip 1.2; (0.5)^2 = 0.25, (0.2)^2 = 0.04    -> 0.25
    #   token 2: old 0.0, v 0.1, R 1.0 -> v_clip 0.1; 0.81 and 0.81                   -> 0.81
    #   loss = 0.5 * (0.64 + 0.25 + 0.81) / 3 = 0.5 * 1.7 / 3 = 0.2833333;  clip_fraction 1/3
    values = t([[1.5, 1.5, 0.1, 30.0]])
    old_values = t([[1.0, 1.0, 0.0, -30.0]])
    returns = t([[2.0, 1.0, 1.0, 0.0]])
    mask = t([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    assert close(loss, 0.85 / 3)
    assert close(stats["clip_fraction"], 1 / 3)


def test_logprobs_from_logits_by_hand():
    # logsumexp(2, 1, 0) = ln(e^2 + e + 1) = ln(7.3890561 + 2.7182818 + 1) = ln(11.1073379)
    #                    = 2.4076059;  so log p(0) = -0.4076059, log p(2) = -2.4076059.
    logits = torch.tensor([[[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]]], dtype=torch.bfloat16)
    out = logprobs_from_logits(logits, torch.tensor([[0, 2]]))
    assert out.dtype == torch.float32
    assert close(out, [[-0.4076059, -2.4076059]], atol=1e-6)


def test_ptx_loss_is_shifted_cross_entropy_ignoring_minus_100():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[3, 1, 4, 1, -100], [5, -100, 2, 6, 0]])
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert close(ptx_loss(logits, labels), expected.item(), atol=1e-6)
    # Logits whose next label is ignored (row 0 last-but-one, row 1 first) do not matter,
    # nor does the first label (no position predicts it).
    changed = logits.clone()
    changed[0, 3] += 100.0
    changed[1, 0] -= 100.0
    relabelled = labels.clone()
    relabelled[:, 0] = 0
    assert close(ptx_loss(changed, relabelled), expected.item(), atol=1e-6)
    # Uniform logits: every scored token has NLL ln(7) = 1.9459101.
    assert close(ptx_loss(torch.zeros(2, 5, 7), labels), math.log(7), atol=1e-6)


def test_ptx_loss_with_nothing_to_score_is_zero_with_a_gradient():
    logits = torch.zeros(1, 3, 4, requires_grad=True)
    loss = ptx_loss(logits, torch.full((1, 3), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_whitening_a_single_real_position_removes_the_mean_only():
    x = torch.tensor([[0.7, 5.0]])
    mask = torch.tensor([[1.0, 0.0]])
    assert masked_whiten(x, mask).tolist() == [[0.0, 0.0]]
    assert masked_whiten(x, mask, shift_mean=False).tolist() == [[pytest.approx(0.7), 0.0]]
