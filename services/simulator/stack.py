"""The demo's handle on the local stack: the ``flywheel`` commands, run for its data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


class StackCommands:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir.resolve()
        self.env = {**os.environ, **env, "FLYWHEEL_DATA_DIR": str(self.data_dir)}

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"flywheel {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        shown = json.loads(self.run("train", "status", "--json", "--limit", str(limit)))
        return shown["runs"]

    def create_api_key(self, name: str, requests_per_minute: float | None = None) -> str:
        """A new API key for ``name`` (``flywheel keys create``), as each user has their own;
        ``requests_per_minute`` overrides the gateway's rate limit for it (and its burst)."""
        limits = []
        if requests_per_minute is not None:
            limits = ["--requests-per-minute", str(requests_per_minute)]
            limits += ["--burst", str(max(1, int(requests_per_minute)))]
        printed = self.run("keys", "create", name, *limits)
        return printed.splitlines()[1].strip()  # the line after "<id>  <name>"
