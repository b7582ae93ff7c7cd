"""`flywheel keys ...` as an operator runs it: a real process, the real key file, real Redis."""

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from services.common.api_keys import ApiKeyStore
from services.common.redis_names import REVOKED_API_KEYS
from tests.harness import redis_db_url

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys_redis(redis_url):
    url = redis_db_url(redis_url, 7)
    client = redis.Redis.from_url(url, decode_responses=True)
    client.delete(REVOKED_API_KEYS)
    yield url, client
    client.close()


def run_cli(data_dir: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {"FLYWHEEL_DATA_DIR": str(data_dir), "FLYWHEEL_REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "keys", *args],
        cwd=REPO,
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_create_list_and_revoke_everywhere(tmp_path, keys_redis):
    url, client = keys_redis
    made = run_cli(tmp_path, url, "create", "ci-bot", "--requests-per-minute", "30")
    assert made.returncode == 0, made.stderr
    key_id, key = made.stdout.split()[0], made.stdout.splitlines()[1]
    store = ApiKeyStore(tmp_path / "api-keys.json")
    record = store.authenticate(key)
    assert (
        record is not None and record.id == key_id and record.rate_limit_requests_per_minute == 30
    )
    assert key_id in run_cli(tmp_path, url, "list").stdout
    assert key not in run_cli(tmp_path, url, "list").stdout  # the secret is shown once only

    revoked = run_cli(tmp_path, url, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert ApiKeyStore(tmp_path / "api-keys.json").authenticate(key) is None
    assert client.sismember(REVOKED_API_KEYS, key_id)  # the feedback service's source
    assert f"revoked: {key_id}" in run_cli(tmp_path, url, "list").stdout
    again = run_cli(tmp_path, url, "revoke", key_id)
    assert again.returncode == 1 and "no key" in again.stderr


def test_revoke_while_redis_is_down_says_so_and_still_revokes(tmp_path):
    store = ApiKeyStore(tmp_path / "api-keys.json")
    key, record = store.create("x")
    down = "redis://127.0.0.1:1/0"
    result = run_cli(tmp_path, down, "revoke", record.id)
    assert result.returncode == 0 and "warning: Redis unreachable" in result.stderr
    assert ApiKeyStore(tmp_path / "api-keys.json").authenticate(key) is None
    assert ApiKeyStore(tmp_path / "api-keys.json").revoked_ids() == {record.id}
