"""``flywheel up | down | status``: the whole stack on one machine, as plain processes.

``up`` is idempotent like ``docker compose up -d``: Redis (only if none answers), then
feedback, reward, engine and gateway, each detached with its log in ``<data>/logs`` and a
state file in ``<data>/run``; it returns once every service it started answers its
readiness probe. ``down`` stops them in reverse order; ``status`` says what runs, whether it
is ready and which model versions serve. See docs/local-stack.md.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import services
from services.cli.stack_process import Launched, launch, log_tail, stop, uptime
from services.cli.stack_redis import (
    RedisUnavailableError,
    redis_address,
    redis_answers,
    redis_command,
)
from services.cli.stack_services import (
    NO_ANSWER,
    READY,
    SERVICE_NAMES,
    SETTLED,
    ServiceSpec,
    StackSettings,
    build_services,
)
from services.cli.stack_state import (
    is_running,
    read_record,
    remove_record,
    write_record,
)
from services.common.registry import ModelRegistry

REDIS = "redis"
EXIT_NOT_READY = 3  # `status`: something is stopped, dead or not ready
REPO_ROOT = Path(services.__file__).resolve().parents[1]


class StackError(RuntimeError):
    """A failure of `up` meant for the person at the terminal (printed without a traceback)."""


@dataclass(frozen=True)
class Stack:
    """Where one stack lives, and how its services are configured."""

    data_dir: Path
    settings: StackSettings
    services: dict[str, ServiceSpec]

    @classmethod
    def load(cls, data_dir: Path | None) -> Stack:
        settings = StackSettings() if data_dir is None else StackSettings(data_dir=data_dir)
        # Absolute: the services run with it, and later commands compare paths.
        root = settings.data_dir.resolve()
        settings = settings.model_copy(update={"data_dir": root})
        return cls(root, settings, build_services(root))

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def dev_key_path(self) -> Path:
        return self.data_dir / "dev-api-key"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One `up` or `down` at a time per data dir: two at once would start services twice."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def child_env(self, spec: ServiceSpec | None = None) -> dict[str, str]:
        """The services' environment: the caller's (so every FLYWHEEL_* override reaches
        them), plus the data dir, the import path, and what a local stack needs."""
        env = dict(os.environ)
        env["FLYWHEEL_DATA_DIR"] = str(self.data_dir)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env.setdefault("PYTHONUNBUFFERED", "1")  # the log shows what happened before a crash
        env.setdefault("FLYWHEEL_LOG_FORMAT", "text")  # logs here are read by people
        for key, value in (spec.env if spec else {}).items():
            env.setdefault(key, value)
        return env


# ---- the commands ------------------------------------------------------------------------


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir", type=Path, help="the stack's data (default: FLYWHEEL_DATA_DIR or ./data)"
    )
    up = subparsers.add_parser(
        "up", parents=[data_dir], help="start Redis and the services; wait until they are ready"
    )
    up.add_argument(
        "--only",
        nargs="+",
        choices=SERVICE_NAMES,
        metavar="SERVICE",
        help=f"start only these ({', '.join(SERVICE_NAMES)}); Redis is always ensured",
    )
    up.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for each service (default: FLYWHEEL_STACK_READY_TIMEOUT_S or 180)",
    )
    subparsers.add_parser("down", parents=[data_dir], help="stop what `up` started")
    subparsers.add_parser(
        "status", parents=[data_dir], help="what runs, whether it is ready, which versions serve"
    )


def run(args: argparse.Namespace) -> int:
    stack = Stack.load(args.data_dir)
    match args.command:
        case "up":
            try:
                return up(stack, args.only or list(SERVICE_NAMES), args.timeout)
            except KeyboardInterrupt:
                print(
                    "\ninterrupted: what started keeps running (`flywheel status`, "
                    "`flywheel down`)",
                    file=sys.stderr,
                )
                return 130
        case "down":
            return down(stack)
        case "status":
            return status(stack)
    raise AssertionError(args.command)


def up(stack: Stack, only: list[str], timeout_s: float | None) -> int:
    """Start what is not running and wait until it is ready; raises StackError on failure."""
    timeout_s = timeout_s or stack.settings.ready_timeout_s
    selected = [name for name in SERVICE_NAMES if name in only]
    states: dict[str, str] = {}
    with stack.locked():
        if "engine" in selected:
            ensure_policy(stack)
        states[REDIS] = ensure_redis(stack)
        key = ensure_dev_key(stack)  # before the gateway starts, so it finds the key at once
        stack.settings.resolved_service_token()  # made once here, before the services race
        launched: dict[str, Launched] = {}
        for name in selected:
            spec = stack.services[name]
            for dependency in spec.depends_on:
                if dependency in launched:
                    states[dependency] = wait_ready(stack, launched.pop(dependency), timeout_s)
            started = start_service(stack, spec)
            if started is None:
                states[name] = f"already running, {spec.readiness()}"
            else:
                launched[name] = started
        for launch_ in launched.values():
            states[launch_.record.service] = wait_ready(stack, launch_, timeout_s)
    print_table(stack, [REDIS, *selected], states)
    print_dev_key(stack, key, with_example="gateway" in selected)
    return 0


def down(stack: Stack) -> int:
    """Stop in reverse start order, so nothing calls a service that is already gone."""
    if not stack.run_dir.is_dir():
        print(f"nothing to stop: no stack in {stack.data_dir}")
        return 0
    with stack.locked():
        for name in reversed(SERVICE_NAMES):
            record = read_record(stack.run_dir, name)
            if record is None:
                continue
            outcome = stop(record, stack.services[name].drain_timeout_s + 5)
            remove_record(stack.run_dir, name)
            print(f"{name}: {outcome}")
        record = read_record(stack.run_dir, REDIS)
        if record is not None:
            outcome = stop(record, stack.settings.redis_stop_timeout_s)
            remove_record(stack.run_dir, REDIS)
            print(f"{REDIS}: {outcome}")
        elif redis_answers(stack.settings.redis_url):
            print(f"{REDIS}: left running (flywheel did not start it)")
    print("stack is down")
    return 0


class StatusRow(NamedTuple):
    service: str
    state: str
    pid: str
    uptime: str
    address: str
    readiness: str
    version: str
    healthy: bool


def status(stack: Stack) -> int:
    """Exit 0 when Redis answers and every service `up` started runs and is ready (or waits for
    a reward model, which a fresh stack rightly does); 3 otherwise. Services `up --only` left
    out show as stopped and do not count."""
    redis_row = _redis_row(stack)
    rows = [_service_row(stack, name) for name in SERVICE_NAMES]
    header = ("SERVICE", "STATE", "PID", "UPTIME", "ADDRESS", "READINESS", "VERSION")
    _print_rows([header, *(row[:-1] for row in [redis_row, *rows])])
    started = [row for row in rows if row.state != "stopped"]
    if not started:
        print("nothing runs: start the stack with `flywheel up`")
    healthy = bool(started) and redis_row.healthy and all(row.healthy for row in started)
    return 0 if healthy else EXIT_NOT_READY


# ---- up's steps --------------------------------------------------------------------------


def ensure_policy(stack: Stack) -> None:
    """The engine serves the promoted policy: make policy/v0 from the shipped base model if the
    store has no policy yet (a first `up` on a fresh machine)."""
    registry = ModelRegistry(stack.settings.model_store_dir)
    if registry.versions("policy"):
        return
    print(
        f"no policy in {registry.root}: converting the base model into policy/v0 "
        "(about 25 s, once) ...",
        flush=True,
    )
    started = time.monotonic()
    # Imported here: torch and transformers take seconds to import, and only this step needs them.
    from services.common.base_model import init_policy_v0

    info, _ = init_policy_v0(registry)
    print(f"created {info.id} ({info.status}) in {time.monotonic() - started:.0f} s", flush=True)


def ensure_redis(stack: Stack) -> str:
    """Use the Redis at the URL, or start one there; returns its state for the table."""
    url = stack.settings.redis_url
    record = read_record(stack.run_dir, REDIS)
    if record is not None and not is_running(record):
        remove_record(stack.run_dir, REDIS)
        record = None
    if redis_answers(url):
        return "already running" if record else "already running (not started by flywheel)"
    if record is not None:
        raise StackError(f"the Redis flywheel started (pid {record.pid}) does not answer at {url}")
    try:
        command = redis_command(url, stack.data_dir, stack.settings.redis_server)
    except RedisUnavailableError as error:
        raise StackError(str(error)) from None
    print(f"starting Redis at {redis_address(url)} ...", flush=True)
    started = launch(
        REDIS,
        command,
        env=stack.child_env(),
        log_path=stack.log_dir / f"{REDIS}.log",
        address=redis_address(url),
        ports={"port": int(command[command.index("--port") + 1])},
    )
    write_record(stack.run_dir, started.record)
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if started.process.poll() is not None or time.monotonic() > deadline:
            _fail(started, "Redis did not start")
        time.sleep(0.05)
    return "started"


def start_service(stack: Stack, spec: ServiceSpec) -> Launched | None:
    """Start ``spec`` unless its recorded process still runs (then None: left alone)."""
    record = read_record(stack.run_dir, spec.name)
    if record is not None:
        if is_running(record):
            return None
        remove_record(stack.run_dir, spec.name)  # stale: that process is gone
    for setting, port in spec.ports.items():
        if _port_taken(port):
            raise StackError(
                f"{spec.name}: port {port} is taken by a process flywheel did not start; "
                f"stop it, or give {spec.name} another port with {spec.port_variable(setting)}"
            )
    print(f"starting {spec.name} ...", flush=True)
    started = launch(
        spec.name,
        [sys.executable, "-m", spec.module, *spec.args],
        env=stack.child_env(spec),
        log_path=stack.log_dir / f"{spec.name}.log",
        address=spec.address,
        ports=spec.ports,
    )
    write_record(stack.run_dir, started.record)
    return started


def wait_ready(stack: Stack, started: Launched, timeout_s: float) -> str:
    """Poll the readiness probe until it settles; fail (with the log) if the process exits or
    the timeout passes."""
    spec = stack.services[started.record.service]
    deadline = time.monotonic() + timeout_s
    while True:
        code = started.process.poll()
        if code is not None:
            _fail(started, f"{spec.name} exited with code {code} during start")
        state = spec.readiness()
        if state in SETTLED:
            return f"started, {state}"
        if time.monotonic() > deadline:
            _fail(started, f"{spec.name} was not ready after {timeout_s:g} s ({state})")
        time.sleep(0.2)


def _fail(started: Launched, reason: str) -> None:
    log = Path(started.record.log)
    tail = log_tail(log, 20, started.log_offset)
    raise StackError(
        f"{reason}; its log is {log}. Last lines:\n"
        + "\n".join(f"    {line}" for line in tail)
        + "\nServices already started keep running: `flywheel status`, `flywheel down`."
    )


def _port_taken(port: int) -> bool:
    """Whether something already listens there: a clear error now beats a bind error in a log."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def ensure_dev_key(stack: Stack) -> str:
    """The development API key: made on the first `up`, the same one on every later one."""
    from services.common.api_keys import ApiKeyStore
    from services.inference.gateway.settings import GatewaySettings

    gateway = GatewaySettings(data_dir=stack.data_dir)
    # On a first `up` the key file is missing, which is the point of this call: no warning.
    store = ApiKeyStore(gateway.resolved_api_keys_file, warn_if_missing=False)
    return store.ensure_dev_key(stack.dev_key_path)


def print_dev_key(stack: Stack, key: str, *, with_example: bool) -> None:
    print(f"\ndevelopment API key (kept in {stack.dev_key_path}):\n  {key}")
    if not with_example:
        return
    base = stack.services["gateway"].address
    print("try it:")
    print(
        f"  curl {base}/v1/chat/completions \\\n"
        f'    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\\n'
        '    -d \'{"messages": [{"role": "user", "content": "Hello!"}]}\''
    )


# ---- tables ------------------------------------------------------------------------------


def print_table(stack: Stack, names: list[str], states: dict[str, str]) -> None:
    rows = [("SERVICE", "PID", "ADDRESS", "STATE")]
    for name in names:
        record = read_record(stack.run_dir, name)
        if name == REDIS:
            address = redis_address(stack.settings.redis_url)
        else:
            address = stack.services[name].address
        rows.append((name, str(record.pid) if record else "-", address, states.get(name, "-")))
    _print_rows(rows)


def _print_rows(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _redis_row(stack: Stack) -> StatusRow:
    url = stack.settings.redis_url
    answers = redis_answers(url)
    readiness = READY if answers else NO_ANSWER
    record = read_record(stack.run_dir, REDIS)
    if record is None:
        state = "external" if answers else "stopped"
        return StatusRow(REDIS, state, "-", "-", redis_address(url), readiness, "-", answers)
    running = is_running(record)
    return StatusRow(
        REDIS,
        "running" if running else "dead",
        str(record.pid),
        uptime(record) if running else "-",
        record.address,
        readiness,
        "-",
        running and answers,
    )


def _service_row(stack: Stack, name: str) -> StatusRow:
    spec = stack.services[name]
    record = read_record(stack.run_dir, name)
    if record is None:
        return StatusRow(name, "stopped", "-", "-", spec.address, "-", "-", False)
    if not is_running(record):
        return StatusRow(name, "dead", str(record.pid), "-", record.address, "-", "-", False)
    readiness = spec.readiness()
    version = spec.version() if readiness != NO_ANSWER else None
    return StatusRow(
        name,
        "running",
        str(record.pid),
        uptime(record),
        record.address,
        readiness,
        version or "-",
        readiness in SETTLED,
    )
