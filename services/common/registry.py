"""The model registry: versioned model folders with manifests, promotion and rollback.

Layout of a store (a local folder, or a shared volume in a cluster)::

    <root>/.lock                  flock(2) taken by every writer
    <root>/<role>/v0/             one immutable version: model files + manifest.json
    <root>/<role>/v1/
    <root>/<role>/state.json      mutable state: statuses, the promoted version, the canary,
                                  history
    <root>/<role>/.staging-*/     versions being written (invisible to readers)

Why readers never see a half-written version: a version is written in full into
a staging folder, its manifest last, and only then renamed to ``vN``; a rename
is atomic, so ``vN`` either does not exist or is complete. A crash before the
rename leaves a staging folder that nobody lists and the next writer removes.
Why promotion is atomic: everything that changes on promote or rollback lives in
one small ``state.json`` per role, replaced with ``os.replace``; readers see the
old state or the new one. Manifests never change after the rename, so they can
be cached and checksummed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from services.common.atomic_files import fsync_dir, write_atomically

# "judge": the reward model the policy gate asks, trained on comparisons the policy's reward
# model never saw (services/trainer/stages/reward.py); nothing serves it.
ROLES = ("policy", "reward", "judge")
# "canary": serving a share of live traffic beside the promoted version until the trainer's
# watch promotes it or rolls it back (services/trainer/watch.py).
Status = Literal["candidate", "canary", "promoted", "retired", "rejected", "rolled-back"]
MANIFEST = "manifest.json"
STATE = "state.json"
_VERSION_RE = re.compile(r"^v(\d+)$")


class RegistryError(Exception):
    """Base class: every registry failure carries a message meant for an operator."""


class VersionNotFoundError(RegistryError):
    pass


class CorruptVersionError(RegistryError):
    pass


class InvalidTransitionError(RegistryError):
    pass


@dataclass(frozen=True)
class Manifest:
    """What a version is. Written once, before the version becomes visible."""

    role: str
    version: str
    parent: str | None
    created_at: str
    data_snapshot_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.role}/{self.version}"


@dataclass(frozen=True)
class VersionInfo:
    manifest: Manifest
    status: Status
    path: Path

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version


@dataclass(frozen=True)
class Canary:
    """A candidate serving ``share`` of the traffic beside the promoted version since
    ``started_at`` (UTC, ISO 8601)."""

    version: str
    share: float
    started_at: str

    @property
    def started(self) -> datetime:
        return datetime.fromisoformat(self.started_at)


@dataclass(frozen=True)
class Serving:
    """What a role serves: the promoted version and, during a canary, the canary."""

    promoted: str | None
    canary: Canary | None = None


def version_number(version: str) -> int:
    match = _VERSION_RE.match(version)
    if not match:
        raise VersionNotFoundError(f"{version!r} is not a version name (expected v0, v1, ...)")
    return int(match.group(1))


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``policy/v3`` -> (policy, v3); ``policy`` or ``policy/promoted`` -> (policy, None)."""
    role, _, version = ref.partition("/")
    _check_role(role)
    return role, (None if version in ("", "promoted") else version)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise RegistryError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _canary_of(state: dict[str, Any]) -> Canary | None:
    found = state.get("canary")
    return Canary(**found) if found else None


class ModelRegistry:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # ----- reading -------------------------------------------------------------

    def versions(self, role: str) -> list[VersionInfo]:
        """Every readable version of a role, oldest first. See :meth:`problems` for the rest."""
        return [info for _, info, _ in self._scan(role) if info is not None]

    def problems(self, role: str) -> list[tuple[str, str]]:
        """(version, what is wrong) for version folders whose manifest cannot be read."""
        return [(name, problem) for name, _, problem in self._scan(role) if problem is not None]

    def get(self, role: str, version: str) -> VersionInfo:
        return self._info(role, version, self._read_state(role))

    def promoted(self, role: str) -> VersionInfo | None:
        # One read of the state: the promoted name and its status come from the same snapshot.
        state = self._read_state(role)
        current = state.get("promoted")
        return self._info(role, current, state) if current else None

    def canary(self, role: str) -> Canary | None:
        return self.serving(role).canary

    def serving(self, role: str) -> Serving:
        """The promoted version and the canary, from one read of the state."""
        state = self._read_state(role)
        return Serving(state.get("promoted"), _canary_of(state))

    def resolve(self, ref: str) -> VersionInfo:
        """A version from ``role/vN`` or the promoted one from ``role`` / ``role/promoted``."""
        role, version = parse_ref(ref)
        if version is not None:
            return self.get(role, version)
        info = self.promoted(role)
        if info is None:
            raise VersionNotFoundError(f"no {role} version is promoted yet")
        return info

    def history(self, role: str) -> list[dict[str, Any]]:
        return list(self._read_state(role).get("history", []))

    def verify(self, role: str, version: str) -> VersionInfo:
        """Check every file against the sizes and checksums in the manifest."""
        info = self.get(role, version)
        for name, expected in info.manifest.files.items():
            path = info.path / name
            if not path.is_file():
                raise CorruptVersionError(f"{info.id}: file {name} is missing")
            if path.stat().st_size != expected["size"]:
                raise CorruptVersionError(
                    f"{info.id}: {name} has {path.stat().st_size} bytes, "
                    f"manifest says {expected['size']}"
                )
            if sha256_file(path) != expected["sha256"]:
                raise CorruptVersionError(f"{info.id}: {name} does not match its checksum")
        return info

    def version_to_load(self, role: str, version: str, serving: str) -> VersionInfo | None:
        """What a service serving ``serving`` must load for a reload to ``version`` (empty:
        the promoted one), its files checked; None when that is already the one serving.
        The rule every ModelAdmin.Reload follows (reward service, engine)."""
        info = self.resolve(f"{role}/{version}" if version else role)
        if info.version == serving:
            return None
        return self.verify(role, info.version)

    # ----- writing -------------------------------------------------------------

    def create_version(
        self,
        role: str,
        write_files: Callable[[Path], None],
        *,
        parent: str | None = None,
        data_snapshot_id: str | None = None,
        metrics: dict[str, float] | None = None,
        config: dict[str, Any] | None = None,
        notes: str = "",
    ) -> VersionInfo:
        """Write a new candidate version and make it visible in one step.

        ``write_files(folder)`` writes the model files (e.g. ``save_pretrained``).
        The version number is chosen when the finished folder is renamed into
        place, under the registry lock, so concurrent writers never collide.
        """
        _check_role(role)
        if parent is not None:
            self.get(role, parent)
        role_dir = self.root / role
        role_dir.mkdir(parents=True, exist_ok=True)
        staging = role_dir / f".staging-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            write_files(staging)
            files = {
                p.relative_to(staging).as_posix(): {
                    "size": p.stat().st_size,
                    "sha256": sha256_file(p),
                }
                for p in sorted(staging.rglob("*"))
                if p.is_file()
            }
            with self._lock():
                self._remove_abandoned_staging(role_dir)
                version = f"v{self._next_number(role)}"
                manifest = Manifest(
                    role=role,
                    version=version,
                    parent=parent,
                    created_at=_now(),
                    data_snapshot_id=data_snapshot_id,
                    metrics=dict(metrics or {}),
                    config=dict(config or {}),
                    notes=notes,
                    files=files,
                )
                # The manifest is the last file written: its presence marks a complete version.
                with (staging / MANIFEST).open("w") as f:
                    json.dump(asdict(manifest), f, indent=2, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(staging, role_dir / version)
                fsync_dir(role_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return VersionInfo(manifest, "candidate", role_dir / version)

    def promote(self, role: str, version: str, *, force: bool = False) -> VersionInfo:
        """Make ``version`` the one that serves. Rejected versions need ``force``."""
        with self._lock():
            info = self.get(role, version)
            if info.status == "rejected" and not force:
                raise InvalidTransitionError(
                    f"{info.id} was rejected by a gate; promote it with force=True if you must"
                )
            state = self._read_state(role)
            previous = state.get("promoted")
            if previous == version:
                return info
            self._end_canary_for_promotion(state, version)
            self._move_promotion(role, state, "promote", version, previous, "retired")
        return self.get(role, version)

    def start_canary(self, role: str, version: str, share: float) -> Canary:
        """Serve candidate ``version`` to ``share`` (0 < share < 1) of the traffic beside the
        promoted version. One canary at a time; it ends with :meth:`promote` (it won) or
        :meth:`end_canary` (it lost)."""
        if not 0 < share < 1:
            raise InvalidTransitionError(f"a canary's share must lie in (0, 1), not {share}")
        with self._lock():
            info = self.get(role, version)
            state = self._read_state(role)
            running = _canary_of(state)
            if running is not None:
                raise InvalidTransitionError(
                    f"{role}/{running.version} is the canary already; one canary at a time"
                )
            if info.status != "candidate":
                raise InvalidTransitionError(
                    f"{info.id} is {info.status}; only a candidate can be a canary"
                )
            if not state.get("promoted"):
                raise InvalidTransitionError(f"no {role} version is promoted to compare with")
            # To the microsecond: the watch counts only votes given after this moment.
            canary = Canary(version, share, datetime.now(UTC).isoformat())
            state["canary"] = asdict(canary)
            state.setdefault("statuses", {})[version] = "canary"
            self._append_history(
                state,
                "canary",
                version,
                state["promoted"],
                share=str(share),
                started_at=canary.started_at,
            )
            self._write_state(role, state)
        return canary

    def end_canary(self, role: str, reason: str = "") -> Canary:
        """Take the canary off the traffic as a loser (status rolled-back); the promoted
        version serves everyone again."""
        with self._lock():
            state = self._read_state(role)
            canary = _canary_of(state)
            if canary is None:
                raise InvalidTransitionError(f"no {role} canary is running")
            del state["canary"]
            state["statuses"][canary.version] = "rolled-back"
            self._append_history(
                state, "end-canary", canary.version, state.get("promoted"), reason=reason
            )
            self._write_state(role, state)
        return canary

    def rollback(self, role: str, to: str | None = None) -> VersionInfo:
        """Withdraw the promoted version and promote ``to`` (default: its parent)."""
        with self._lock():
            state = self._read_state(role)
            current = state.get("promoted")
            if not current:
                raise InvalidTransitionError(f"no {role} version is promoted, nothing to roll back")
            target = to or self.get(role, current).manifest.parent
            if target is None:
                raise InvalidTransitionError(f"{role}/{current} has no parent to roll back to")
            if target == current:
                raise InvalidTransitionError(f"{role}/{current} is already the promoted version")
            self.get(role, target)
            self._end_canary_for_promotion(state, target)
            self._move_promotion(role, state, "rollback", target, current, "rolled-back")
        return self.get(role, target)

    def reject(self, role: str, version: str, reason: str = "") -> VersionInfo:
        """Mark a candidate as failed by a gate, so it is never promoted by accident."""
        with self._lock():
            info = self.get(role, version)
            if info.status != "candidate":
                raise InvalidTransitionError(
                    f"{info.id} is {info.status}; only candidates can be rejected"
                )
            state = self._read_state(role)
            state.setdefault("statuses", {})[version] = "rejected"
            self._append_history(state, "reject", version, None, reason=reason)
            self._write_state(role, state)
        return self.get(role, version)

    # ----- internals -----------------------------------------------------------

    def _end_canary_for_promotion(self, state: dict[str, Any], version: str) -> None:
        """A promotion ends the canary: it is the version promoted (it won), or an operator
        promoted another one over it (it goes back to being a candidate)."""
        canary = _canary_of(state)
        if canary is None:
            return
        del state["canary"]
        if canary.version != version:
            state["statuses"][canary.version] = "candidate"
            self._append_history(
                state, "end-canary", canary.version, state.get("promoted"), reason="superseded"
            )

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _version_dirs(self, role: str) -> list[Path]:
        _check_role(role)
        role_dir = self.root / role
        if not role_dir.is_dir():
            return []
        dirs = [p for p in role_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
        return sorted(dirs, key=lambda p: version_number(p.name))

    def _info(self, role: str, version: str, state: dict[str, Any]) -> VersionInfo:
        _check_role(role)
        version_number(version)
        path = self.root / role / version
        if not path.is_dir():
            known = ", ".join(p.name for p in self._version_dirs(role)) or "none"
            raise VersionNotFoundError(f"{role}/{version} does not exist (known: {known})")
        manifest = self._read_manifest(path, role, version)
        return VersionInfo(manifest, state.get("statuses", {}).get(version, "candidate"), path)

    def _scan(self, role: str) -> Iterator[tuple[str, VersionInfo | None, str | None]]:
        """(version, info, None) for readable versions, (version, None, problem) for the rest."""
        state = self._read_state(role)
        for path in self._version_dirs(role):
            try:
                yield path.name, self._info(role, path.name, state), None
            except RegistryError as exc:
                yield path.name, None, str(exc)

    def _next_number(self, role: str) -> int:
        dirs = self._version_dirs(role)
        return version_number(dirs[-1].name) + 1 if dirs else 0

    @staticmethod
    def _read_manifest(path: Path, role: str, version: str) -> Manifest:
        file = path / MANIFEST
        try:
            data = json.loads(file.read_text())
        except FileNotFoundError:
            raise CorruptVersionError(f"{role}/{version} has no {MANIFEST}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptVersionError(f"{role}/{version}: {MANIFEST} is not JSON ({exc})") from None
        try:
            manifest = Manifest(**data)
        except TypeError as exc:
            raise CorruptVersionError(f"{role}/{version}: bad {MANIFEST} ({exc})") from None
        if (manifest.role, manifest.version) != (role, version):
            raise CorruptVersionError(
                f"{role}/{version}: {MANIFEST} describes {manifest.role}/{manifest.version}"
            )
        return manifest

    def _read_state(self, role: str) -> dict[str, Any]:
        _check_role(role)
        path = self.root / role / STATE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise CorruptVersionError(f"{path} is not valid JSON ({exc})") from None

    def _write_state(self, role: str, state: dict[str, Any]) -> None:
        write_atomically(self.root / role / STATE, json.dumps(state, indent=2, sort_keys=True))

    def _move_promotion(
        self,
        role: str,
        state: dict,
        event: str,
        version: str,
        previous: str | None,
        previous_status: str,
    ) -> None:
        """Promote ``version`` in ``state``, give the one it replaces ``previous_status``, record
        ``event`` in the history and write the state (under the caller's lock)."""
        statuses = state.setdefault("statuses", {})
        if previous:
            statuses[previous] = previous_status
        statuses[version] = "promoted"
        state["promoted"] = version
        self._append_history(state, event, version, previous)
        self._write_state(role, state)

    @staticmethod
    def _append_history(
        state: dict[str, Any], action: str, version: str, previous: str | None, **extra: str
    ) -> None:
        entry = {"at": _now(), "action": action, "version": version, "previous": previous}
        state.setdefault("history", []).append({**entry, **extra})

    @staticmethod
    def _remove_abandoned_staging(role_dir: Path) -> None:
        """Delete staging folders of writers on this host that died before finishing."""
        host = socket.gethostname()
        for path in role_dir.glob(".staging-*"):
            parts = path.name.split("-")
            # .staging-<host>-<pid>-<uuid>; the host may itself contain dashes.
            pid_text, owner_host = parts[-2], "-".join(parts[1:-2])
            if owner_host != host or not pid_text.isdigit():
                continue
            try:
                os.kill(int(pid_text), 0)
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except PermissionError:
                pass  # alive, owned by someone else
