"""Redis for the local stack: use the one at ``FLYWHEEL_REDIS_URL``, or start one there.

A developer who already runs Redis (or a test suite that does) keeps it: ``up`` starts
``redis-server`` only when nothing answers at the URL, and ``down`` stops Redis only if
``up`` started it. The Redis it starts keeps its data under ``<data_dir>/redis`` with the
append-only file on, so feedback events on the stream survive a ``down``/``up``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import redis

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class RedisUnavailableError(RuntimeError):
    pass


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def redis_address(url: str) -> str:
    """The URL without its password, for tables and messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '127.0.0.1'}:{parts.port or 6379}{parts.path}"


def redis_command(url: str, data_dir: Path, binary: str) -> list[str]:
    """The ``redis-server`` command line that serves ``url``; raises if ``up`` cannot."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise RedisUnavailableError(
            f"no Redis answers at {redis_address(url)}, and `flywheel up` only starts a plain "
            "redis:// one; start it yourself or point FLYWHEEL_REDIS_URL at a running Redis"
        )
    host = parts.hostname or "127.0.0.1"
    if host not in LOCAL_HOSTS:
        raise RedisUnavailableError(
            f"no Redis answers at {redis_address(url)}, and `flywheel up` starts Redis only on "
            "this machine; start that one, or unset FLYWHEEL_REDIS_URL for a local one"
        )
    executable = shutil.which(binary)
    if executable is None:
        raise RedisUnavailableError(
            f"no Redis answers at {redis_address(url)} and {binary!r} is not installed: "
            "install it (apt-get install redis-server) or point FLYWHEEL_REDIS_URL at a "
            "running Redis"
        )
    folder = (data_dir / "redis").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        executable,
        "--port",
        str(parts.port or 6379),
        "--bind",
        "::1" if host == "::1" else "127.0.0.1",
        "--dir",
        str(folder),
        "--appendonly",
        "yes",
        "--daemonize",
        "no",  # flywheel keeps the pid and the log (stdout) like any other service's
        "--logfile",
        "",
    ]
    if parts.password:
        command += ["--requirepass", parts.password]
    return command
