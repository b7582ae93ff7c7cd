"""API keys of the public API: a JSON file of ids and hashes, never the keys themselves.

A key is a bearer token ``fwk_...`` (:func:`services.common.credentials.new_api_key`). The file
keeps, per key, its public id (:func:`~services.common.credentials.api_key_id`, which the
gateway records with every answer), the SHA-256 of the key, a name, when it was made and an
optional rate-limit override. Whoever can read the file still cannot call the API.

The file is written atomically (temp file, fsync, ``os.replace``; mode 0600) and a lock file
serializes writers, so ``flywheel`` commands may add keys while gateways run; each gateway
notices the new file by its inode/mtime/size, checked at most every ``check_interval_s``.

File format (version 1)::

    {"version": 1, "keys": [{"id": "key_...", "sha256": "...", "name": "...",
      "created_at": "2025-01-01T00:00:00+00:00",
      "rate_limit_requests_per_minute": null, "rate_limit_burst": null}],
     "revoked": [{"id": "key_...", "revoked_at": "2025-02-01T00:00:00+00:00"}]}

``revoked`` keeps the ids of revoked keys: the gateway refuses a key as soon as it is gone
from ``keys``, and publishes ``revoked`` to Redis for the feedback service, which does not
read this file (services/common/revocations.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from services.common.atomic_files import write_atomically
from services.common.credentials import (
    API_KEY_PREFIX,
    api_key_id,
    new_api_key,
    token_hash,
    token_matches,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class KeyRecord:
    """What the gateway knows about one API key."""

    id: str
    sha256: str
    name: str
    created_at: datetime
    rate_limit_requests_per_minute: float | None = None
    """Overrides the gateway's rate_limit_requests_per_minute for this key."""
    rate_limit_burst: int | None = None
    """Overrides the gateway's rate_limit_burst for this key."""

    def to_json(self) -> dict:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict) -> KeyRecord:
        return cls(
            id=data["id"],
            sha256=data["sha256"],
            name=data.get("name", ""),
            created_at=datetime.fromisoformat(data["created_at"]),
            rate_limit_requests_per_minute=data.get("rate_limit_requests_per_minute"),
            rate_limit_burst=data.get("rate_limit_burst"),
        )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value; None if there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ApiKeyStore:
    """The key file, cached in memory and re-read when it changes.

    Thread-safe. A missing file means no keys (every request is refused); a file that cannot
    be parsed keeps the keys read last (and logs an error), so a bad hand edit does not lock
    every client out.
    """

    def __init__(
        self, path: str | Path, *, check_interval_s: float = 1.0, warn_if_missing: bool = True
    ) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._by_id: dict[str, KeyRecord] = {}
        self._revoked: dict[str, str] = {}  # id -> when (ISO 8601)
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = -float("inf")
        self._warned_missing = not warn_if_missing  # a tool about to create the file: quiet
        self._refresh(force=True)

    # ---- reading ---------------------------------------------------------------------------

    def _stat_signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        # The inode changes on every os.replace, so a rewrite within one mtime tick is seen too.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked_at < self.check_interval_s:
                return
            self._checked_at = now
            signature = self._stat_signature()
            if signature == self._signature and not force:
                return
            if signature is None:
                if not self._warned_missing:
                    log.warning("no API key file at %s: every request will be refused", self.path)
                    self._warned_missing = True
                self._by_id, self._revoked, self._signature = {}, {}, None
                return
            try:
                keys, revoked = self._read_file()
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.error(
                    "cannot read API keys from %s (%s); keeping the previous keys", self.path, error
                )
                return
            self._by_id, self._revoked, self._signature = keys, revoked, signature
            self._warned_missing = False
            log.info("loaded %d API keys from %s", len(keys), self.path)

    def _read_file(self) -> tuple[dict[str, KeyRecord], dict[str, str]]:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown API key file version {data.get('version')!r}")
        records = [KeyRecord.from_json(item) for item in data["keys"]]
        revoked = {item["id"]: item["revoked_at"] for item in data.get("revoked", [])}
        return {record.id: record for record in records}, revoked

    def list_keys(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        self._refresh()
        with self._lock:
            return sorted(self._by_id.values(), key=lambda r: r.created_at)

    def get(self, key_id: str) -> KeyRecord | None:
        self._refresh()
        with self._lock:
            return self._by_id.get(key_id)

    def revoked_ids(self) -> frozenset[str]:
        """Ids of every key revoked so far."""
        self._refresh()
        with self._lock:
            return frozenset(self._revoked)

    def authenticate(self, bearer: str | None) -> KeyRecord | None:
        """The record of the key ``bearer`` (the token, without "Bearer "), or None.

        The record is found by the key's id (a fingerprint of the key) and then checked by a
        constant-time comparison of hashes, so timing tells nothing about stored keys.
        """
        if not bearer or not bearer.startswith(API_KEY_PREFIX):
            return None
        record = self.get(api_key_id(bearer))
        if record is None or not token_matches(bearer, record.sha256):
            return None
        return record

    # ---- writing ---------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[tuple[dict[str, KeyRecord], dict[str, str]]]:
        """Read-modify-write (keys, revoked) under an exclusive lock shared with other
        processes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600), "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys, revoked = self._read_file() if self.path.exists() else ({}, {})
            yield keys, revoked
            records = sorted(keys.values(), key=lambda r: r.created_at)
            document = {
                "version": FORMAT_VERSION,
                "keys": [r.to_json() for r in records],
                "revoked": [{"id": i, "revoked_at": at} for i, at in sorted(revoked.items())],
            }
            write_atomically(self.path, json.dumps(document, indent=2) + "\n", mode=0o600)
        self._refresh(force=True)

    def _add(
        self,
        key: str,
        name: str,
        rate_limit_requests_per_minute: float | None,
        rate_limit_burst: int | None,
    ) -> KeyRecord:
        record = KeyRecord(
            id=api_key_id(key),
            sha256=token_hash(key),
            name=name,
            created_at=datetime.now(UTC),
            rate_limit_requests_per_minute=rate_limit_requests_per_minute,
            rate_limit_burst=rate_limit_burst,
        )
        with self._writing() as (keys, _revoked):
            keys[record.id] = record
        return record

    def create(
        self,
        name: str,
        *,
        rate_limit_requests_per_minute: float | None = None,
        rate_limit_burst: int | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: returns the key (shown once, never stored) and its record."""
        key = new_api_key()
        return key, self._add(key, name, rate_limit_requests_per_minute, rate_limit_burst)

    def set_rate_limit(
        self,
        key_id: str,
        requests_per_minute: float | None,
        burst: int | None,
    ) -> KeyRecord | None:
        """Set (or with None, clear) a key's rate-limit override; None if the key is unknown."""
        with self._writing() as (keys, _revoked):
            record = keys.get(key_id)
            if record is None:
                return None
            record = replace(
                record,
                rate_limit_requests_per_minute=requests_per_minute,
                rate_limit_burst=burst,
            )
            keys[key_id] = record
        return record

    def revoke(self, key_id: str) -> bool:
        """Remove a key and remember its id as revoked; gateways refuse it from their next file
        check (and publish it to the feedback service). False if unknown."""
        with self._writing() as (keys, revoked):
            if keys.pop(key_id, None) is None:
                return False
            revoked[key_id] = datetime.now(UTC).isoformat()
            return True

    def ensure_dev_key(self, dev_key_path: str | Path) -> str:
        """The local stack's development key: made on first call, the same one afterwards.

        The key is kept in clear in ``dev_key_path`` (0600), which ``flywheel up`` prints, and
        written there before it is added to the store: if the process dies in between, the next
        call finds the file and (re-)adds the same key, so the key a person was shown keeps
        working even if the key file was deleted.
        """
        dev_key_path = Path(dev_key_path)
        dev_key_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = dev_key_path.with_name(dev_key_path.name + ".lock")
        with open(os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600), "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two `flywheel up` at once make one key
            key = dev_key_path.read_text().strip() if dev_key_path.exists() else ""
            if not key.startswith(API_KEY_PREFIX):
                key = new_api_key()
                write_atomically(dev_key_path, key + "\n", mode=0o600)
            self._refresh(force=True)
            if self.authenticate(key) is None:
                self._add(key, "development", None, None)
        return key
