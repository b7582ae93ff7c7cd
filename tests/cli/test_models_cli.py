"""`flywheel models ...` as an operator runs it: a real process against a real store."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from services.common.promotions import promotions_channel

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_cli(model_store, redis_url):
    def run(*args: str, redis: str = redis_url) -> subprocess.CompletedProcess:
        env = {
            "FLYWHEEL_MODEL_STORE": str(model_store.root),
            "FLYWHEEL_REDIS_URL": redis,
            "PATH": "/usr/bin:/bin",
        }
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def add_child(model_store, parent: str = "v0") -> str:
    source = model_store.get("policy", parent).path
    info = model_store.create_version(
        "policy",
        lambda folder: (folder / "model.safetensors").write_bytes(
            (source / "model.safetensors").read_bytes()
        ),
        parent=parent,
        metrics={"win_rate": 0.61},
        data_snapshot_id="snap-1",
    )
    return info.version


def test_list_shows_versions_status_parent_and_metrics(run_cli, model_store):
    add_child(model_store)
    result = run_cli("models", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "STATUS", "PARENT", "CREATED", "SNAPSHOT", "METRICS"]
    assert lines[1].split()[:3] == ["policy/v0", "promoted", "-"]
    assert lines[2].split()[:3] == ["policy/v1", "candidate", "v0"]
    assert lines[2].split()[4:] == ["snap-1", "win_rate=0.61"]

    as_json = json.loads(run_cli("models", "list", "policy", "--json").stdout)
    assert [v["id"] for v in as_json["policy"]["versions"]] == ["policy/v0", "policy/v1"]


def test_promote_is_announced_on_redis(run_cli, model_store, redis_url):
    version = add_child(model_store)
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(promotions_channel(client))
    pubsub.get_message(timeout=1)  # the subscribe confirmation

    result = run_cli("models", "promote", f"policy/{version}")

    assert result.returncode == 0, result.stderr
    assert "announced on Redis to 1 subscriber(s)" in result.stdout
    message = pubsub.get_message(timeout=5)
    assert json.loads(message["data"]) == {"role": "policy", "version": "v1", "action": "promote"}
    shown = json.loads(run_cli("models", "show", "policy").stdout)
    assert (shown["id"], shown["status"]) == ("policy/v1", "promoted")

    result = run_cli("models", "rollback", "policy")
    assert "policy/v0 serves now" in result.stdout
    message = pubsub.get_message(timeout=5)
    assert json.loads(message["data"])["action"] == "rollback"
    pubsub.close()
    client.close()


def test_promote_without_redis_still_promotes_and_warns(run_cli, model_store):
    version = add_child(model_store)
    started = time.monotonic()
    result = run_cli("models", "promote", f"policy/{version}", redis="redis://127.0.0.1:1/0")
    assert result.returncode == 0
    assert "could not announce on Redis" in result.stderr
    assert model_store.promoted("policy").version == version
    assert time.monotonic() - started < 30


def test_errors_are_one_clear_line_and_exit_1(run_cli, model_store):
    missing = run_cli("models", "show", "policy/v9")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: policy/v9 does not exist (known: v0)"

    no_parent = run_cli("models", "rollback", "policy")
    assert no_parent.returncode == 1
    assert "has no parent" in no_parent.stderr

    (model_store.root / "policy" / "v0" / "manifest.json").write_text("not json")
    broken = run_cli("models", "show", "policy/v0")
    assert broken.returncode == 1
    assert "manifest.json is not JSON" in broken.stderr
    listing = run_cli("models", "list")
    assert "UNREADABLE" in listing.stdout


def test_reject_then_promote_needs_force(run_cli, model_store):
    version = add_child(model_store)
    assert run_cli("models", "reject", f"policy/{version}", "--reason", "gate").returncode == 0
    refused = run_cli("models", "promote", f"policy/{version}")
    assert refused.returncode == 1 and "rejected" in refused.stderr
    assert run_cli("models", "promote", f"policy/{version}", "--force").returncode == 0


def test_verify_reports_tampered_weights(run_cli, model_store):
    assert run_cli("models", "verify", "policy/v0").returncode == 0
    weights = model_store.get("policy", "v0").path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    result = run_cli("models", "verify", "policy/v0")
    assert result.returncode == 1
    assert "does not match its checksum" in result.stderr
