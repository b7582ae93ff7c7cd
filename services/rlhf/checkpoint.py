"""Training checkpoints that a killed run resumes from, reaching the same parameters.

A checkpoint holds everything that decides what happens next: the trainable
modules' weights, optimizer and scheduler states, every RNG (python, torch CPU
and CUDA), the step counters and any extra state (a KL controller, the data
position), and the config that produced it. It is written to a temporary folder
and renamed into place, so a kill during the write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "training_state.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path | str,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, Any],
    extra: dict[str, Any],
) -> None:
    """Atomically replace ``folder`` with the current training state.

    ``optimizers`` maps names to anything with ``state_dict()`` (optimizers,
    schedulers, KL controllers); ``extra`` holds plain values (counters, config).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One writer per checkpoint folder: leftovers of a save that was killed can go.
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    state = {
        "modules": {name: m.state_dict() for name, m in modules.items()},
        "stateful": {name: o.state_dict() for name, o in optimizers.items()},
        "rng": rng_state(),
        "extra": extra,
    }
    with (tmp / STATE_FILE).open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    # Two renames: the old checkpoint is kept until the new one is in place.
    old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.old")
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def read_extra(folder: Path | str) -> dict[str, Any] | None:
    """The ``extra`` of a checkpoint (counters, config) without restoring anything."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)["extra"]


def load_checkpoint(
    folder: Path | str,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, Any],
    check: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """Restore the state saved by :func:`save_checkpoint` in place; returns ``extra``.

    None when there is no checkpoint. ``check(extra)`` runs before anything is
    restored and may raise to refuse the checkpoint (a different config or data
    set). A crash between the two renames of a save leaves only the ``.old``
    copy, which is picked up here.
    """
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        leftovers = (
            sorted(folder.parent.glob(f".{folder.name}.*.old")) if folder.parent.is_dir() else []
        )
        if not leftovers:
            return None
        os.rename(leftovers[-1], folder)
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    if check is not None:
        check(state["extra"])
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    for name, stateful in optimizers.items():
        stateful.load_state_dict(state["stateful"][name])
    restore_rng(state["rng"])
    return state["extra"]


# ----- what makes a resumed run equal an uninterrupted one -----------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a function of (seed, epoch) only, so a resume replays it."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def fingerprint(data: Any) -> str:
    """A stable hash of JSON-able training data, so a checkpoint is never resumed on other data."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()


def check_same_run(
    saved: dict[str, Any],
    config: dict[str, Any],
    data_fingerprint: str | None,
    neutral: Collection[str],
) -> None:
    """Refuse a checkpoint made with another config (``neutral`` fields aside) or other data
    (``data_fingerprint`` None: the data is not checked, e.g. a stream of prompts)."""
    # Through JSON so that tuples and lists (Adam betas) compare equal.
    before = json.loads(json.dumps(saved["config"]))
    current = json.loads(json.dumps(config))
    differ = sorted(
        k
        for k in set(before) | set(current)
        if k not in neutral and before.get(k) != current.get(k)
    )
    if differ:
        raise ValueError(f"the checkpoint was made with a different config: {', '.join(differ)}")
    if data_fingerprint is not None and saved["data_fingerprint"] != data_fingerprint:
        raise ValueError("the checkpoint was made on different training data")


class RunCheckpoints:
    """Resume, periodic saves and a save on stopping, for a run counted in steps.

    One object per run: it restores the latest checkpoint under ``checkpoint_dir``
    (refusing one made with another config or data), saves every ``every`` steps,
    and once more when the run stops between two periodic saves. Without a
    ``checkpoint_dir`` every call does nothing, so trainers need no special case.
    ``state()`` returns the run's own counters; the config and the data fingerprint
    are added here, so every checkpoint can be checked on resume.
    """

    NAME = "checkpoint"

    def __init__(
        self,
        checkpoint_dir: Path | str | None,
        modules: dict[str, torch.nn.Module],
        stateful: dict[str, Any],
        config: dict[str, Any],
        data_fingerprint: str | None,
        neutral: Collection[str],
        every: int,
    ) -> None:
        self.folder = Path(checkpoint_dir) / self.NAME if checkpoint_dir is not None else None
        self.modules, self.stateful = modules, stateful
        self.config, self.data_fingerprint, self.neutral = config, data_fingerprint, neutral
        self.every = every
        self._saved_at: int | None = None

    def restore(self) -> dict[str, Any] | None:
        """The saved state after restoring weights, optimizers and RNG; None if none."""
        if self.folder is None:
            return None
        saved = load_checkpoint(
            self.folder,
            self.modules,
            self.stateful,
            check=lambda extra: check_same_run(
                extra, self.config, self.data_fingerprint, self.neutral
            ),
        )
        if saved is not None:
            self._saved_at = saved["saved_at_step"]
        return saved

    def after_step(self, step: int, state: Callable[[], dict[str, Any]]) -> None:
        if step % self.every == 0:
            self.save(step, state)

    def at_stop(self, step: int, state: Callable[[], dict[str, Any]]) -> None:
        """Save unless the last periodic save was at this very step."""
        if self._saved_at != step:
            self.save(step, state)

    def save(self, step: int, state: Callable[[], dict[str, Any]]) -> None:
        if self.folder is None:
            return
        extra = {
            **state(),
            "saved_at_step": step,
            "config": self.config,
            "data_fingerprint": self.data_fingerprint,
        }
        save_checkpoint(self.folder, self.modules, self.stateful, extra)
        self._saved_at = step
