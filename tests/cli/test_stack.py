"""`flywheel up | status | down` as a developer runs them: real processes, real ports.

Every service gets free ports through its settings' environment variables, the data dir is a
temporary folder whose model store holds tiny models (so the services load in a second), and
Redis is the test suite's own (`tools/test-services.sh up`), except in the test where `up`
must start a Redis of its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from transformers import AutoTokenizer

from services.common.registry import ModelRegistry
from services.rlhf.heads import ScalarHeadModel
from tests.harness import STACK_PORT_VARIABLES as PORT_VARIABLES
from tests.harness import free_ports, redis_db_url

REPO = Path(__file__).resolve().parents[2]
HAS_GATEWAY = (REPO / "services/inference/gateway/__main__.py").is_file()
SERVICES = [
    "feedback",
    "reward",
    "engine",
    *(["gateway"] if HAS_GATEWAY else []),
    "trainer-control",
    "trainer-train",
    "trainer-beat",
]


def add_tiny_rm(registry: ModelRegistry, tiny_model_dir: Path) -> None:
    def write(folder):
        ScalarHeadModel.from_pretrained(tiny_model_dir).save_pretrained(folder)
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)

    registry.promote("reward", registry.create_version("reward", write).version)


class Stack:
    """Runs `python -m services.cli.main` in a clean environment for one temporary stack."""

    def __init__(self, tmp_path: Path, model_store: ModelRegistry, redis_url: str) -> None:
        self.data_dir = tmp_path / "data"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
        self.env.update(
            {
                "FLYWHEEL_DATA_DIR": str(self.data_dir),
                "FLYWHEEL_MODEL_STORE": str(model_store.root),
                "FLYWHEEL_REDIS_URL": redis_url,
                "FLYWHEEL_ENGINE_DEVICE": "cpu",
                "FLYWHEEL_REWARD_DEVICE": "cpu",
                "FLYWHEEL_STACK_READY_TIMEOUT_S": "90",
            }
        )
        self.env.update(zip(PORT_VARIABLES, map(str, free_ports(len(PORT_VARIABLES))), strict=True))
        for service in ("FEEDBACK", "REWARD", "ENGINE", "GATEWAY"):
            self.env[f"FLYWHEEL_{service}_DRAIN_TIMEOUT_S"] = "1"

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        print(f"$ flywheel {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def record(self, service: str) -> dict:
        return json.loads((self.data_dir / "run" / f"{service}.json").read_text())

    def rows(self, output: str) -> dict[str, str]:
        """The status table: service name -> its whole line."""
        return {line.split()[0]: line for line in output.splitlines()[1:] if line.strip()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_dead(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), f"pid {pid} still runs"


@pytest.fixture
def stack(tmp_path, model_store, redis_url):
    """A stack whose store has a tiny policy/v0 and no reward model (as a fresh one)."""
    test_redis = redis_db_url(redis_url, 9)
    stack = Stack(tmp_path, model_store, test_redis)
    yield stack
    stack("down")  # whatever a failed assertion left running


def test_up_status_up_again_kill_down(stack, model_store, tiny_model_dir, redis_url):
    add_tiny_rm(model_store, tiny_model_dir)
    pids_before_up = set()
    up = stack("up", "--only", *SERVICES)
    assert up.returncode == 0, up.stderr
    assert "starting Redis" not in up.stdout  # the test Redis answers: up must not start one
    for service in SERVICES:
        assert f"starting {service}" in up.stdout
        pid = stack.record(service)["pid"]
        assert alive(pid)
        pids_before_up.add(pid)
        assert (stack.data_dir / "logs" / f"{service}.log").stat().st_size > 0
    assert not (stack.data_dir / "run" / "redis.json").exists()
    assert (stack.data_dir / "dev-api-key").read_text().startswith("fwk_")

    status = stack("status")
    assert status.returncode == 0
    rows = stack.rows(status.stdout)
    assert "external" in rows["redis"]
    for service in SERVICES:
        assert " running " in rows[service] and " ready " in rows[service]
    assert rows["engine"].split()[-1] == "v0"
    assert rows["reward"].split()[-1] == "v0"

    again = stack("up", "--only", *SERVICES)
    assert again.returncode == 0
    assert "starting" not in again.stdout
    assert {stack.record(s)["pid"] for s in SERVICES} == pids_before_up
    assert again.stdout.count("already running, ready") == len(SERVICES)

    reward_pid = stack.record("reward")["pid"]
    os.kill(reward_pid, signal.SIGKILL)
    wait_dead(reward_pid)
    status = stack("status")
    assert status.returncode == 3
    assert " dead " in stack.rows(status.stdout)["reward"]

    restarted = stack("up", "--only", *SERVICES)  # the stale state file is replaced
    assert restarted.returncode == 0
    assert "starting reward" in restarted.stdout and "starting engine" not in restarted.stdout
    assert stack.record("reward")["pid"] != reward_pid

    pids = {stack.record(s)["pid"] for s in SERVICES}
    down = stack("down")
    assert down.returncode == 0
    assert "redis: left running" in down.stdout
    for pid in pids:
        wait_dead(pid, timeout=1)
    assert not list((stack.data_dir / "run").glob("*.json"))
    assert redis.Redis.from_url(redis_url).ping()  # not ours: still there
    assert stack("down").returncode == 0
    status = stack("status")
    assert status.returncode == 3 and "nothing runs" in status.stdout


def test_up_starts_redis_when_none_answers_and_down_stops_it(stack):
    """Also: a fresh stack has no reward model; the reward service waits for one, and that
    is a successful `up` and a healthy `status`."""
    (port,) = free_ports(1)
    stack.env["FLYWHEEL_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    up = stack("up", "--only", "reward")
    assert up.returncode == 0, up.stderr
    assert "starting Redis" in up.stdout
    assert "started, waiting for a reward model" in stack.rows(up.stdout)["reward"]
    client = redis.Redis(port=port)
    assert client.ping()
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("dir")["dir"] == str((stack.data_dir / "redis").resolve())
    redis_pid = stack.record("redis")["pid"]
    status = stack("status")
    assert status.returncode == 0
    assert " running " in stack.rows(status.stdout)["redis"]
    assert "waiting for a reward model" in stack.rows(status.stdout)["reward"]

    down = stack("down")
    assert down.returncode == 0 and "redis: stopped" in down.stdout
    wait_dead(redis_pid, timeout=1)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert not list((stack.data_dir / "run").glob("*.json"))


def test_up_reports_a_service_that_dies_with_its_log(stack):
    stack.env["FLYWHEEL_FEEDBACK_DATABASE_URL"] = "nosuchdriver://nowhere/db"
    up = stack("up", "--only", "feedback")
    assert up.returncode == 1
    log = stack.data_dir / "logs" / "feedback.log"
    assert "feedback exited with code" in up.stderr and str(log) in up.stderr
    assert "nosuchdriver" in up.stderr  # the log's last lines, shown right there
    assert " dead " in stack.rows(stack("status").stdout)["feedback"]


def test_up_refuses_a_port_another_program_holds(stack):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(stack.env["FLYWHEEL_FEEDBACK_GRPC_PORT"])))
        squatter.listen()
        up = stack("up", "--only", "feedback")
    assert up.returncode == 1
    assert "FLYWHEEL_FEEDBACK_GRPC_PORT" in up.stderr
    assert not (stack.data_dir / "run" / "feedback.json").exists()
