"""Every Redis key, stream, channel and consumer group in one place.

Producers and consumers import the names from here so that a rename cannot
leave one side listening on a stream nobody writes to any more.
"""

from __future__ import annotations

PREFIX = "flywheel"

# Streams (durable, consumed with consumer groups; ack only after the work is durable).
FEEDBACK_EVENTS_STREAM = f"{PREFIX}:feedback:events"
"""Every accepted feedback event, written by the feedback service's outbox relay."""


# Pub/sub channels (fire-and-forget notifications; receivers also poll the registry). Redis
# delivers a channel's messages to every subscriber whatever database it selected, so each
# channel names its database: two flywheels sharing one Redis on different databases do not
# hear each other.
def model_promotions_channel(db: int) -> str:
    """JSON ``{"role", "version", "action"}`` published when a version is promoted or rolled
    back, for the stack whose Redis URL selects database ``db``."""
    return f"{PREFIX}:db{db}:models:promotions"


# Plain keys.
TRAINER_RUN_LOCK = f"{PREFIX}:trainer:run-lock"
"""Held while a training run is in progress: one run at a time (value ``<fence>:<owner>``)."""
TRAINER_FIRST_CHECK = f"{PREFIX}:trainer:first-check"
"""When the trainer first checked for data (ISO time): the start of the first wait."""
TRAINER_WATCH_REPORT = f"{PREFIX}:trainer:watch"
"""The watch's last look (JSON): the canary or promoted policy it compared, its intervals and
what it decided; read by `flywheel train status` and the chat page's status view."""


def rate_limit_key(api_key_id: str) -> str:
    """The gateway's rate-limit bucket of one API key (a GCRA timestamp)."""
    return f"{PREFIX}:gateway:ratelimit:{api_key_id}"


def feedback_delivered_key(event_id: str) -> str:
    """Set (with a TTL) when a feedback event has been added to FEEDBACK_EVENTS_STREAM, in the
    same atomic script as the XADD, so a relay that retries after a crash cannot add it twice."""
    return f"{PREFIX}:feedback:delivered:{event_id}"


REVOKED_API_KEYS = f"{PREFIX}:apikeys:revoked"
"""Set of revoked API key ids: the gateway publishes its key file's tombstones here and the
feedback service refuses those keys (and their groups' feedback tokens)."""
