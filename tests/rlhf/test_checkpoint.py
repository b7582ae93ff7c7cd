import random

import pytest
import torch

from services.rlhf.checkpoint import load_checkpoint, save_checkpoint


def make():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer


def step(model, optimizer):
    x = torch.randn(8, 4)  # draws from the torch RNG, which the checkpoint must restore
    loss = (model(x) ** 2).mean() + random.random() * 0  # python RNG in play too
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_resumed_run_reaches_the_same_parameters(tmp_path):
    model, optimizer = make()
    for _ in range(6):
        step(model, optimizer)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model, optimizer = make()
    for _ in range(3):
        step(model, optimizer)
    save_checkpoint(tmp_path / "ckpt", {"model": model}, {"opt": optimizer}, {"step": 3})
    for _ in range(2):  # work after the checkpoint that a kill throws away
        step(model, optimizer)

    model, optimizer = make()
    extra = load_checkpoint(tmp_path / "ckpt", {"model": model}, {"opt": optimizer})
    assert extra == {"step": 3}
    for _ in range(3):
        step(model, optimizer)
    for a, b in zip(uninterrupted, model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def test_no_checkpoint_and_overwrite(tmp_path):
    model, optimizer = make()
    assert load_checkpoint(tmp_path / "none", {"model": model}, {"opt": optimizer}) is None
    save_checkpoint(tmp_path / "c", {"model": model}, {}, {"step": 1})
    save_checkpoint(tmp_path / "c", {"model": model}, {}, {"step": 2})
    assert load_checkpoint(tmp_path / "c", {"model": model}, {}) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_crash_between_the_renames_keeps_the_previous_checkpoint(tmp_path):
    model, _ = make()
    save_checkpoint(tmp_path / "c", {"model": model}, {}, {"step": 5})
    (tmp_path / "c").rename(tmp_path / ".c.deadbeef.old")  # as if killed right after rename 1
    assert load_checkpoint(tmp_path / "c", {"model": model}, {}) == {"step": 5}


def test_run_checkpoints_save_periodically_and_at_stop(tmp_path):
    from services.rlhf.checkpoint import RunCheckpoints, read_extra

    model, optimizer = make()
    saves = []

    def run(start: int, stop: int) -> RunCheckpoints:
        checkpoints = RunCheckpoints(
            tmp_path, {"model": model}, {"opt": optimizer}, {"lr": 0.1}, "data-1", set(), every=3
        )
        assert (checkpoints.restore() or {}).get("step", 0) == start
        for step in range(start + 1, stop + 1):
            checkpoints.after_step(step, lambda step=step: {"step": step})
            saves.append((read_extra(tmp_path / "checkpoint") or {}).get("step"))
        checkpoints.at_stop(stop, lambda: {"step": stop})
        return checkpoints

    run(0, 4)  # periodic save at 3, then one at the stop (4)
    assert saves == [None, None, 3, 3] and read_extra(tmp_path / "checkpoint")["step"] == 4
    inode = (tmp_path / "checkpoint").stat().st_ino
    run(4, 4)  # resumed at its last save: nothing new to write
    assert (tmp_path / "checkpoint").stat().st_ino == inode

    other = RunCheckpoints(tmp_path, {"model": model}, {}, {"lr": 0.2}, "data-1", set(), every=3)
    with pytest.raises(ValueError, match="different config: lr"):
        other.restore()
    no_folder = RunCheckpoints(None, {"model": model}, {}, {}, None, set(), every=1)
    assert no_folder.restore() is None
    no_folder.after_step(1, dict)  # nothing to do, nothing raised
