"""A round's traffic: the training personas chatting and giving feedback at the same time.

Users do not wait for each other, and the engine batches concurrent requests, so each persona
works through its share of the round's requests on its own thread, with at most
``in_flight`` requests at once (more would only wait in the engine's queue, and every one in
flight when traffic stops still has to finish). Who asks what is drawn up front from the
demo's seed, so a round is the same requests whatever the timing. Traffic stops early, after
the requests in flight, once ``stop`` is set (the demo sets it when the trainer starts a run,
so training does not share the CPU with serving).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from services.simulator.client import Labeler


@dataclass
class TrafficResult:
    requests: int = 0
    feedback: dict[str, int] = field(default_factory=dict)  # kind -> events sent
    # (prompt, answer a, answer b) of two candidates per request: the agreement measurement.
    served_pairs: list[tuple[str, str, str]] = field(default_factory=list)


def plan(
    personas: Sequence[str], prompts: Sequence[str], requests: int, rng: random.Random
) -> dict[str, list[str]]:
    """Each persona's prompts, in order: ``requests`` draws of a persona and a prompt."""
    queues: dict[str, list[str]] = {name: [] for name in personas}
    for _ in range(requests):
        queues[rng.choice(personas)].append(rng.choice(prompts))
    return queues


def run_traffic(
    labelers: dict[str, Labeler],
    queues: dict[str, list[str]],
    candidates: int,
    temperature: float,
    stop: threading.Event,
    on_request: Callable[[], None] = lambda: None,
    in_flight: int = 4,
) -> TrafficResult:
    """Every persona asks its queue's prompts and judges the answers, all personas at once."""
    result = TrafficResult()
    lock = threading.Lock()
    slots = threading.Semaphore(in_flight)

    def persona_session(name: str) -> None:
        try:
            ask_all(name)
        except BaseException:
            stop.set()  # the others stop too: a failing stack fails the round at once
            raise

    def ask_all(name: str) -> None:
        labeler = labelers[name]
        for prompt in queues[name]:
            with slots:
                if stop.is_set():
                    return
                served = labeler.ask(prompt, candidates, temperature)
            kind = labeler.give_feedback(served)
            a, b = labeler.rng.sample(range(len(served.answers)), 2)
            with lock:
                result.requests += 1
                result.feedback[kind] = result.feedback.get(kind, 0) + 1
                result.served_pairs.append((prompt, served.answers[a], served.answers[b]))
            on_request()

    busy = [name for name, queue in queues.items() if queue]
    if busy:
        with ThreadPoolExecutor(len(busy), thread_name_prefix="persona") as pool:
            for future in [pool.submit(persona_session, name) for name in busy]:
                future.result()  # a persona's failure (the stack down) ends the round loudly
    return result
