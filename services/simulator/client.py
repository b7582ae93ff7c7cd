"""A persona as a client of the public APIs, as a real user is: it chats through the gateway
(the official ``openai`` client, ``n`` candidates) and gives feedback on what it was served
through the feedback service's HTTP API (rankings, thumbs, pairwise votes; sometimes a retry
of the same vote with the same ``client_event_id``)."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass

import httpx
import openai

from services.simulator.personas import Persona


@dataclass(frozen=True)
class Served:
    """One request's candidates, as the client received them."""

    prompt: str
    answers: list[str]
    response_ids: list[str]
    feedback_token: str
    model_version: str


@dataclass
class FeedbackCounts:
    rankings: int = 0
    thumbs: int = 0
    pairwise: int = 0
    retries: int = 0
    refused: int = 0


class Labeler:
    def __init__(
        self,
        persona: Persona,
        gateway_url: str,
        feedback_url: str,
        api_key: str,
        seed: int = 0,
        max_tokens: int = 64,
    ) -> None:
        self.persona = persona
        self.rng = random.Random(f"{persona.name}:{seed}")
        self.max_tokens = max_tokens
        self.chat_client = openai.OpenAI(
            base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=2, timeout=300
        )
        self.feedback = httpx.Client(
            base_url=feedback_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        )
        self.counts = FeedbackCounts()

    def close(self) -> None:
        self.chat_client.close()
        self.feedback.close()

    def ask(
        self, prompt: str, n: int = 4, temperature: float = 1.0, seed: int | None = None
    ) -> Served:
        """``n`` answers to ``prompt``; ``seed`` fixes the sampling (drawn from the persona's
        generator when not given)."""
        reply = self.chat_client.chat.completions.create(
            model="policy",
            messages=[{"role": "user", "content": prompt}],
            n=n,
            temperature=temperature,
            max_tokens=self.max_tokens,
            seed=self.rng.randrange(2**32) if seed is None else seed,
        )
        meta = reply.model_extra["flywheel"]
        return Served(
            prompt,
            [choice.message.content or "" for choice in reply.choices],
            list(meta["response_ids"]),
            meta["feedback_token"],
            reply.system_fingerprint or "",
        )

    def give_feedback(self, served: Served) -> str:
        """Judge ``served`` the way this persona does; the kind of feedback given."""
        kinds = list(self.persona.behaviour)
        kind = self.rng.choices(kinds, weights=[self.persona.behaviour[k] for k in kinds])[0]
        if kind == "ranking":
            order = self.persona.rank(served.prompt, served.answers, self.rng)
            body = {"kind": "ranking", "ranking": [[served.response_ids[i]] for i in order]}
            self.counts.rankings += 1
        elif kind == "thumb":
            index = self.rng.randrange(len(served.answers))
            value = self.persona.thumb(served.prompt, served.answers[index], self.rng)
            body = {"kind": "thumb", "response_id": served.response_ids[index], "value": value}
            self.counts.thumbs += 1
        else:
            a, b = self.rng.sample(range(len(served.answers)), 2)
            first = self.persona.prefers_first(
                served.prompt, served.answers[a], served.answers[b], self.rng
            )
            body = {
                "kind": "pairwise",
                "response_a": served.response_ids[a],
                "response_b": served.response_ids[b],
                "outcome": "a" if first else "b",
            }
            self.counts.pairwise += 1
        body["client_event_id"] = f"{self.persona.name}-{uuid.uuid4().hex}"
        self._send(body)
        if self.rng.random() < self.persona.retry_rate:  # a client retrying after a timeout
            self.counts.retries += 1
            self._send(body)
        return kind

    def _send(self, body: dict, record_wait_s: float = 15.0) -> None:
        # The gateway records answers in the background (a durable spool, then the feedback
        # service), so a vote right after the answer may find it not recorded yet: wait and
        # send again, with the same client_event_id, as a patient client would.
        deadline = time.monotonic() + record_wait_s
        reply = self.feedback.post("/v1/feedback", json=body)
        while _not_recorded_yet(reply) and time.monotonic() < deadline:
            time.sleep(0.2)
            reply = self.feedback.post("/v1/feedback", json=body)
        if reply.status_code not in (200, 201):
            self.counts.refused += 1
            raise RuntimeError(f"feedback refused ({reply.status_code}): {reply.text[:300]}")


def _not_recorded_yet(reply: httpx.Response) -> bool:
    if reply.status_code != 404:
        return False
    try:
        return reply.json()["error"]["code"] == "unknown_response"
    except (ValueError, KeyError, TypeError):
        return False
