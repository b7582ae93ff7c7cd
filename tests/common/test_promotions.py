"""PromotionWatcher against a real Redis: an announcement switches at once, and only the
watchers on the announcer's database hear it; without Redis the registry poll still finds the
promotion."""

from __future__ import annotations

import threading
import time

from services.common.promotions import PromotionWatcher, announce_promotion


def _two_versions(model_store):
    first = model_store.promoted("policy").version
    second = model_store.create_version("policy", lambda folder: (folder / "w").write_text("x"))
    return first, second.version


def _wait_for(seen: list, version: str, publish=None, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if version in seen:
            return True
        if publish is not None:
            publish()
        time.sleep(0.1)
    return False


def test_an_announcement_switches_without_waiting_for_the_poll(model_store, redis_url):
    _, second = _two_versions(model_store)
    seen, lock = [], threading.Lock()

    def on_promoted(version):
        with lock:
            seen.append(version)

    watcher = PromotionWatcher(model_store, "policy", on_promoted, redis_url, poll_s=3600)
    watcher.start()
    try:
        model_store.promote("policy", second)
        # Published until heard: the watcher subscribes asynchronously after start().
        assert _wait_for(
            seen, second, lambda: announce_promotion(redis_url, "policy", second, "promote")
        )
        announce_promotion(redis_url, "reward", "v7", "promote")  # another role: ignored
        time.sleep(0.3)
        assert seen.count(second) == 1 and "v7" not in seen
    finally:
        watcher.stop()


def test_an_announcement_on_another_database_is_not_heard(model_store, redis_url):
    """Pub/sub ignores Redis databases; the channel names its own, so a flywheel on another
    database of the same Redis does not hear this one's promotions."""
    _, second = _two_versions(model_store)
    other_db = redis_url.rsplit("/", 1)[0] + f"/{int(redis_url.rsplit('/', 1)[1]) + 1}"
    seen = []
    watcher = PromotionWatcher(model_store, "policy", seen.append, redis_url, poll_s=3600)
    watcher.start()
    try:
        model_store.promote("policy", second)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # long past the watcher's subscription
            assert announce_promotion(other_db, "policy", second, "promote") == 0
            time.sleep(0.1)
        assert seen == []
        assert _wait_for(
            seen, second, lambda: announce_promotion(redis_url, "policy", second, "promote")
        )
    finally:
        watcher.stop()


def test_without_redis_the_registry_poll_finds_the_promotion(model_store):
    _, second = _two_versions(model_store)
    seen = []
    watcher = PromotionWatcher(
        model_store, "policy", seen.append, "redis://127.0.0.1:1/0", poll_s=0.2
    )
    watcher.start()
    try:
        model_store.promote("policy", second)
        assert _wait_for(seen, second)
    finally:
        watcher.stop()


def test_the_watcher_follows_a_canary_from_its_start_to_its_end(model_store):
    first, second = _two_versions(model_store)
    promoted, canaries = [], []
    watcher = PromotionWatcher(
        model_store,
        "policy",
        promoted.append,
        "redis://127.0.0.1:1/0",
        poll_s=0.2,
        on_canary=canaries.append,
    )
    watcher.start()
    try:
        model_store.start_canary("policy", second, 0.3)
        started = model_store.canary("policy")
        assert _wait_for(canaries, started)
        model_store.end_canary("policy", "lost")
        assert _wait_for(canaries, None)
        assert canaries == [started, None] and started.share == 0.3
        assert promoted == [first]  # the promoted version never changed
    finally:
        watcher.stop()
