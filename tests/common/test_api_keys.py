"""ApiKeyStore: keys stored as ids and hashes, atomic private writes, reload on change, and the
local stack's development key."""

from __future__ import annotations

import json
import os
import stat

from services.common.api_keys import ApiKeyStore, bearer_token
from services.common.credentials import API_KEY_PREFIX, api_key_id, new_api_key, token_hash


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_create_stores_only_the_id_and_hash(tmp_path):
    path = tmp_path / "keys" / "api-keys.json"
    store = ApiKeyStore(path)
    key, record = store.create("alice", rate_limit_requests_per_minute=600, rate_limit_burst=50)
    assert key.startswith(API_KEY_PREFIX)
    assert record.id == api_key_id(key) and record.sha256 == token_hash(key)
    assert record.name == "alice" and record.created_at.tzinfo is not None
    text = path.read_text()
    assert key not in text
    (stored,) = json.loads(text)["keys"]
    assert stored["id"] == record.id and stored["sha256"] == record.sha256
    assert stored["rate_limit_requests_per_minute"] == 600 and stored["rate_limit_burst"] == 50
    assert mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_authenticate(tmp_path):
    store = ApiKeyStore(tmp_path / "api-keys.json")
    key, record = store.create("alice")
    other, _ = store.create("bob")
    assert store.authenticate(key) == record
    assert store.authenticate(other).name == "bob"
    assert store.authenticate(new_api_key()) is None  # well-formed, unknown
    assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.authenticate("not-a-key") is None
    assert store.authenticate("") is None and store.authenticate(None) is None
    assert store.authenticate(bearer_token(f"Bearer {key}")) == record
    assert [r.name for r in store.list_keys()] == ["alice", "bob"]


def test_bearer_token():
    assert bearer_token("Bearer fwk_abc") == "fwk_abc"
    assert bearer_token("bearer   fwk_abc ") == "fwk_abc"
    assert bearer_token("Basic dXNlcjpwYXNz") is None
    assert bearer_token("Bearer ") is None and bearer_token(None) is None


def test_no_file_means_no_keys(tmp_path):
    store = ApiKeyStore(tmp_path / "missing.json")
    assert store.list_keys() == []
    assert store.authenticate(new_api_key()) is None


def test_reloads_when_another_process_adds_or_revokes_a_key(tmp_path):
    path = tmp_path / "api-keys.json"
    gateway = ApiKeyStore(path, check_interval_s=0)  # a running gateway
    cli = ApiKeyStore(path)  # `flywheel` adding keys meanwhile
    key, record = cli.create("carol")
    assert gateway.authenticate(key) == record
    assert cli.set_rate_limit(record.id, 5, 2).rate_limit_burst == 2
    assert gateway.authenticate(key).rate_limit_requests_per_minute == 5
    assert cli.revoke(record.id) is True and cli.revoke(record.id) is False
    assert gateway.authenticate(key) is None


def test_checks_the_file_at_most_every_interval(tmp_path):
    path = tmp_path / "api-keys.json"
    gateway = ApiKeyStore(path, check_interval_s=3600)
    key, _ = ApiKeyStore(path).create("dave")
    assert gateway.authenticate(key) is None  # not looked at yet: the check is cheap
    gateway.check_interval_s = 0
    assert gateway.authenticate(key) is not None


def test_a_broken_file_keeps_the_previous_keys(tmp_path):
    path = tmp_path / "api-keys.json"
    store = ApiKeyStore(path, check_interval_s=0)
    key, _ = store.create("erin")
    path.write_text("{ half an edit")
    assert store.authenticate(key) is not None


def test_ensure_dev_key(tmp_path):
    keys_path = tmp_path / "data" / "api-keys.json"
    dev_path = tmp_path / "data" / "dev-api-key"
    store = ApiKeyStore(keys_path)
    key = store.ensure_dev_key(dev_path)
    assert key.startswith(API_KEY_PREFIX)
    assert dev_path.read_text().strip() == key
    assert mode(dev_path) == 0o600
    assert store.authenticate(key).name == "development"

    # Second start: the same key, no second record.
    assert ApiKeyStore(keys_path).ensure_dev_key(dev_path) == key
    assert len(ApiKeyStore(keys_path).list_keys()) == 1

    # The key file was deleted: the key people were shown is added back, not replaced.
    keys_path.unlink()
    again = ApiKeyStore(keys_path)
    assert again.ensure_dev_key(dev_path) == key
    assert again.authenticate(key) is not None
