"""One run at a time: a Redis lease with a heartbeat and a fencing token.

The lease is a key holding ``<fence>:<owner>`` that expires ``ttl_s`` after its last renewal.
Each acquisition draws a new fencing token from a counter that only grows, and the run
record stores the token of its owner (store/runs.py): writes from a worker whose lease
expired while it was paused fail instead of overwriting the new owner's. A heartbeat thread
renews the lease and the run's heartbeat; when either fails, ``lost`` is set and the run
driver stops its stage.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

import redis

from services.common.redis_names import TRAINER_RUN_LOCK

log = logging.getLogger(__name__)

FENCE_COUNTER = f"{TRAINER_RUN_LOCK}:fence"

# Renew or release only if the key still holds our value (compare-and-act, atomically).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, client: redis.Redis, ttl_s: float, key: str = TRAINER_RUN_LOCK) -> None:
        self._redis = client
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._key = key
        self._value: str | None = None
        self.fence = 0
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; sets ``fence`` to a fresh token."""
        fence = int(self._redis.incr(FENCE_COUNTER))
        value = f"{fence}:{socket.gethostname()}:{os.getpid()}"
        if not self._redis.set(self._key, value, nx=True, px=self._ttl_ms):
            return False
        self._value, self.fence = value, fence
        return True

    def holder(self) -> str | None:
        raw = self._redis.get(self._key)
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else raw

    def renew(self) -> bool:
        return bool(self._redis.eval(_RENEW, 1, self._key, self._value, self._ttl_ms))

    def keep_alive(self, every_s: float, also: Callable[[], None]) -> None:
        """Renew the lease (and call ``also``, the run's heartbeat) every ``every_s`` in a
        thread until :meth:`release`; on a failure set ``lost`` and stop renewing."""

        def beat() -> None:
            while not self._stop.wait(every_s):
                try:
                    if not self.renew():
                        raise RuntimeError("the lease expired or was taken")
                    also()
                except Exception as exc:  # Redis down, the fence moved on, the lease gone
                    log.error("lost the run lease (fence %d): %s", self.fence, exc)
                    self.lost.set()
                    return

        self._thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._value is not None:
            try:
                self._redis.eval(_RELEASE, 1, self._key, self._value)
            except redis.RedisError:
                log.warning("could not release the lease; it expires on its own", exc_info=True)
            self._value = None
