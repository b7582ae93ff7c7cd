"""The outbox relay: moves stored events onto the Redis stream, each exactly once.

Each event goes on the stream through one Lua script that sets a "delivered" key for the event
and XADDs it only if that key was not set yet: both or neither, atomically inside Redis. The
relay removes the outbox rows after the script ran. If the process dies in between, the next
relay (here or in another replica) runs the script again, which skips the event instead of
adding it twice. The delivered keys expire after ``dedupe_ttl_s`` (longer than any outage the
outbox is meant to bridge).

While Redis is unreachable the rows stay in the outbox (the API keeps accepting), the relay
retries with backoff, and the backlog shows in Stats and in
``flywheel_feedback_outbox_backlog``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
import sqlalchemy as sa

from services.common.redis_names import FEEDBACK_EVENTS_STREAM, feedback_delivered_key
from services.feedback import metrics
from services.feedback.store import outbox

log = logging.getLogger(__name__)

_ADD_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  local command = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*'}
  for i = 3, #ARGV do command[#command + 1] = ARGV[i] end
  redis.call(unpack(command))
  return 1
end
return 0
"""


class OutboxRelay:
    def __init__(
        self,
        read_engine: sa.Engine,
        remove_rows: Callable[[list[int]], None],
        redis_client: redis.Redis,
        *,
        stream: str = FEEDBACK_EVENTS_STREAM,
        batch_size: int = 500,
        stream_maxlen: int = 1_000_000,
        dedupe_ttl_s: int = 7 * 24 * 3600,
        idle_poll_s: float = 1.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._engine = read_engine
        self._remove_rows = remove_rows
        self._redis = redis_client
        self._stream = stream
        self._batch_size = batch_size
        self._maxlen = stream_maxlen
        self._dedupe_ttl_s = dedupe_ttl_s
        self._idle_poll_s = idle_poll_s
        self._max_backoff_s = max_backoff_s
        self._script = redis_client.register_script(_ADD_ONCE)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """New rows were committed: deliver them now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def deliver_once(self) -> int:
        """Deliver up to one batch; the number of outbox rows handled."""
        with self._engine.connect() as conn:
            pending = outbox.oldest(conn, self._batch_size)
        if not pending:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for item in pending:
            fields = [v for pair in item.message.items() for v in pair]
            self._script(
                keys=[self._stream, feedback_delivered_key(item.event_id)],
                args=[self._dedupe_ttl_s, self._maxlen, *fields],
                client=pipe,
            )
        added = sum(pipe.execute())
        self._remove_rows([item.id for item in pending])
        metrics.OUTBOX_DELIVERED.inc(added)
        return len(pending)

    def _run(self) -> None:
        backoff = 0.0
        failing_since: float | None = None
        while not self._stopping.is_set():
            try:
                handled = self.deliver_once()
            except Exception as error:
                metrics.OUTBOX_ERRORS.inc()
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    log.warning("outbox relay cannot deliver, will retry: %s", error)
                backoff = min(self._max_backoff_s, max(0.1, backoff * 2))
                self._stopping.wait(backoff)
                continue
            if failing_since is not None:
                log.info(
                    "outbox relay delivering again after %.1f s", time.monotonic() - failing_since
                )
                failing_since = None
            backoff = 0.0
            if handled < self._batch_size:
                self._wake.wait(self._idle_poll_s)
                self._wake.clear()
