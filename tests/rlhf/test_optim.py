import pytest
import torch

from services.rlhf.optim import adamw, cosine_with_warmup, warmup_steps_for


def test_warms_up_to_lr_and_decays_to_min_ratio():
    multiplier = cosine_with_warmup(total_steps=10, warmup_steps=3, min_lr_ratio=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    used = []
    for _ in range(10):
        used.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert used[:3] == pytest.approx([2 / 3, 4 / 3, 2.0])  # the last warm-up step is at lr
    assert used[-1] == pytest.approx(0.2)  # the last step is at lr * min_lr_ratio
    assert all(a >= b for a, b in zip(used[2:], used[3:], strict=False))  # decays monotonically
    assert cosine_with_warmup(5, 0, 0.1)(0) == pytest.approx(1.0)  # no warm-up: starts at lr


def test_warmup_steps_for_a_ratio():
    assert warmup_steps_for(0.0, 100) == 0
    assert warmup_steps_for(0.05, 100) == 5
    assert warmup_steps_for(0.01, 10) == 1  # a positive ratio always warms up a little
    assert warmup_steps_for(2.0, 10) == 10


def test_adamw_is_fused_on_cpu_and_skips_frozen_parameters():
    trained, frozen = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).requires_grad_(False)
    optimizer = adamw([*trained.parameters(), *frozen.parameters()], 1e-3, (0.9, 0.95))
    assert optimizer.defaults["fused"] is True
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    assert len(optimizer.param_groups[0]["params"]) == 2
