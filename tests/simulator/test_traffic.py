"""A round's traffic: personas at once against the real stack, stopping when told to."""

from __future__ import annotations

import random
import threading

import pytest

from services.simulator.client import Labeler
from services.simulator.personas import default_panel
from services.simulator.traffic import plan, run_traffic
from tests.harness import wait_for

PROMPTS = ["How do I boil an egg?", "Name three rivers.", "Tips for sleeping better?"]


def test_the_plan_is_the_same_requests_for_the_same_seed():
    names = ["ada", "ben", "chloe"]
    first = plan(names, PROMPTS, 12, random.Random(3))
    assert first == plan(names, PROMPTS, 12, random.Random(3))
    assert sum(len(queue) for queue in first.values()) == 12
    assert set(first) == set(names)


@pytest.fixture
def labelers(stack, feedback):
    personas = [p for p in default_panel() if not p.held_out][:3]
    made = {
        p.name: Labeler(p, stack.url, feedback.http_url, stack.key, max_tokens=6) for p in personas
    }
    yield made
    for labeler in made.values():
        labeler.close()


def test_every_planned_request_is_asked_and_judged(labelers, feedback):
    queues = plan(list(labelers), PROMPTS, 6, random.Random(0))
    result = run_traffic(labelers, queues, 3, 1.0, threading.Event())
    assert result.requests == 6 == sum(result.feedback.values())
    assert len(result.served_pairs) == 6
    # Every request's three candidates were recorded by the gateway for the feedback to land.
    wait_for(lambda: feedback.interaction_count() == 18, 30, "the gateway's records")


def test_traffic_stops_after_the_requests_in_flight_once_told(labelers):
    queues = plan(list(labelers), PROMPTS, 30, random.Random(0))
    stop = threading.Event()
    asked = []

    def on_request() -> None:
        asked.append(1)
        if len(asked) == 2:
            stop.set()  # as the demo does when the trainer starts a run

    result = run_traffic(labelers, queues, 2, 1.0, stop, on_request)
    # The two done, plus at most one in flight for each of the other personas.
    assert 2 <= result.requests <= 2 + len(labelers) - 1
