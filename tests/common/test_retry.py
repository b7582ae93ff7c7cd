"""The one backoff rule and the one outage log every retrying loop uses."""

from __future__ import annotations

import logging

from services.common.retry import Backoff, Outage


def test_backoff_doubles_up_to_its_cap_with_jitter_and_restarts_after_a_success():
    backoff = Backoff(initial_s=0.5, max_s=4.0, jitter=0.5)
    assert backoff.delay() == 0.0
    bases = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for base in bases:
        delay = backoff.failed()
        assert base * 0.5 <= delay <= base
    for _ in range(2000):  # no overflow however long the outage
        backoff.failed()
    assert 2.0 <= backoff.delay() <= 4.0
    backoff.succeeded()
    assert backoff.delay() == 0.0 and 0.25 <= backoff.failed() <= 0.5


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog):
    outage = Outage(logging.getLogger("test.outage"), "thing")
    with caplog.at_level(logging.INFO, logger="test.outage"):
        assert outage.recovered() is None  # nothing to recover from
        for _ in range(5):
            outage.failed(ConnectionError("down"))
        assert outage.ongoing
        assert outage.recovered() >= 0
        outage.recovered()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "thing failing (down); retrying with backoff"
    assert len(messages) == 2 and messages[1].startswith("thing recovered after ")
