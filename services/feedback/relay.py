"""The outbox relay: moves stored events onto the Redis stream, each exactly once.

Events go on the stream through one Lua script per batch that, for each event, sets a
"delivered" key and XADDs the event only if that key was not set yet, atomically in Redis. The
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
from collections.abc import Callable

import redis
import sqlalchemy as sa

from services.common.redis_names import FEEDBACK_EVENTS_STREAM, feedback_delivered_key
from services.common.retry import Backoff, Outage
from services.feedback import metrics
from services.feedback.store import outbox

log = logging.getLogger(__name__)

# KEYS: the stream, then one "delivered" key per event. ARGV: dedupe TTL, stream maxlen, then
# per event the number of field/value items followed by the items. Returns how many were added.
_ADD_EACH_ONCE = """
local added, at = 0, 3
for i = 2, #KEYS do
  local n = tonumber(ARGV[at])
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    local command = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*'}
    for j = at + 1, at + n do command[#command + 1] = ARGV[j] end
    redis.call(unpack(command))
    added = added + 1
  end
  at = at + n + 1
end
return added
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
        gather_s: float = 0.05,
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
        self._gather_s = gather_s
        self._max_backoff_s = max_backoff_s
        self._script = redis_client.register_script(_ADD_EACH_ONCE)
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
        args: list = [self._dedupe_ttl_s, self._maxlen]
        for item in pending:
            fields = [v for pair in item.message.items() for v in pair]
            args += [len(fields), *fields]
        # One atomic script call per batch: one round trip, and all or nothing.
        added = self._script(
            keys=[self._stream, *(feedback_delivered_key(item.event_id) for item in pending)],
            args=args,
        )
        self._remove_rows([item.id for item in pending])
        metrics.OUTBOX_DELIVERED.inc(added)
        return len(pending)

    def _run(self) -> None:
        backoff = Backoff(0.1, self._max_backoff_s)
        outage = Outage(log, "outbox relay delivery")
        while not self._stopping.is_set():
            try:
                handled = self.deliver_once()
            except Exception as error:
                metrics.OUTBOX_ERRORS.inc()
                outage.failed(error)
                self._stopping.wait(backoff.failed())
                continue
            outage.recovered()
            backoff.succeeded()
            if handled < self._batch_size:
                self._wake.wait(self._idle_poll_s)
                self._wake.clear()
                # Under load every commit wakes the relay; pausing a moment lets the events of
                # several commits go to Redis in one round (a round costs the same for 1 or 500).
                self._stopping.wait(self._gather_s)
