"""The hot path, POST /v1/feedback, as plain ASGI in front of FastAPI.

FastAPI's middleware, dependency and response machinery cost about twice the rest of the
request (parsing, checks, the durable commit) together, which capped ingest far below its
target (docs/benchmarks.md). So :class:`Edge` answers ``POST /v1/feedback`` itself, with the
same pydantic models, rules and error bodies as the FastAPI route (which stays declared, for
the OpenAPI document and as the one definition both use through :func:`accept`). Every other
request goes on to FastAPI. Edge also caps request bodies and times every request.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_json
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.api_keys import bearer_token
from services.common.credentials import api_key_id
from services.feedback import metrics
from services.feedback.api.schemas import FeedbackRequest, RankingFeedback, ThumbFeedback
from services.feedback.core import FeedbackCore
from services.feedback.errors import RefusalKind, Refused, StorageUnavailable
from services.feedback.store.feedback import Credential, FeedbackCommand

FEEDBACK_PATH = "/v1/feedback"
_FEEDBACK_REQUEST = TypeAdapter(FeedbackRequest)
_JSON = (b"content-type", b"application/json")


def credential(authorization: str | None, feedback_token: str | None) -> Credential:
    if authorization:
        secret = bearer_token(authorization)
        if secret is None:
            raise Refused(
                RefusalKind.UNAUTHENTICATED,
                "bad_authorization",
                "use 'Authorization: Bearer <API key>'",
            )
        return Credential(api_key_id=api_key_id(secret))
    if feedback_token:
        return Credential(feedback_token=feedback_token)
    return Credential()


def _command(
    body: FeedbackRequest, who: Credential, max_comment: int, max_k: int
) -> FeedbackCommand:
    payload = body.model_dump(exclude={"kind", "client_event_id", "feedback_token"})
    if isinstance(body, ThumbFeedback) and body.reasons is None:
        # Thumbs without reasons keep the payload they had before reasons existed, so the
        # retry of an event stored then still matches it (the idempotency check hashes it).
        del payload["reasons"]
    if isinstance(body, ThumbFeedback) and body.comment and len(body.comment) > max_comment:
        raise Refused(
            RefusalKind.INVALID,
            "comment_too_long",
            f"comments are at most {max_comment} characters",
            length=len(body.comment),
            limit=max_comment,
        )
    if isinstance(body, RankingFeedback):
        size = sum(len(tier) for tier in body.ranking)
        if size > max_k:
            raise Refused(
                RefusalKind.INVALID,
                "ranking_too_long",
                f"a ranking orders at most {max_k} answers",
                size=size,
                limit=max_k,
            )
    return FeedbackCommand(body.kind, payload, who, body.client_event_id)


async def accept(
    core: FeedbackCore,
    body: FeedbackRequest,
    authorization: str | None,
    feedback_token_header: str | None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Record one vote: (status, event, headers). Raises Refused / StorageUnavailable."""
    who = credential(authorization, feedback_token_header or body.feedback_token)
    settings = core.settings
    command = _command(body, who, settings.max_comment_chars, settings.max_candidates)
    accepted = await core.submit_feedback(command)
    event = accepted.event
    headers = {"Location": f"{FEEDBACK_PATH}/{event['id']}"}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return (200 if accepted.replayed else 201), event, headers


def validation_problems(errors: list[dict], prefix: tuple = ("body",)) -> list[dict]:
    """Pydantic errors as the API reports them (``field`` as FastAPI locates it)."""
    return [
        {
            "field": ".".join(str(p) for p in (*prefix, *e["loc"])),
            "problem": e["msg"],
            "type": e["type"],
        }
        for e in errors
    ]


def invalid_request(problems: list[dict]) -> Refused:
    return Refused(
        RefusalKind.INVALID,
        "invalid_request",
        "the request does not match the API schema",
        errors=problems,
    )


class _TooLarge(Exception):
    pass


class Edge:
    """ASGI: times every request, caps bodies, and serves POST /v1/feedback directly."""

    def __init__(self, app: ASGIApp, core: FeedbackCore) -> None:
        self.app = app
        self.core = core
        self.max_body_bytes = core.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        route = "unmatched"

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            headers = dict(scope["headers"])
            length = headers.get(b"content-length", b"0")
            if not length.isdigit() or int(length) > self.max_body_bytes:
                await self._reply(send_and_note, *self._too_large())
            elif scope["method"] == "POST" and scope["path"] == FEEDBACK_PATH:
                route = FEEDBACK_PATH
                await self._reply(send_and_note, *await self._feedback(headers, receive))
            else:
                await self.app(scope, self._limited(receive), send_and_note)
                route = getattr(scope.get("route"), "path", route)
        finally:
            metrics.REQUEST_LATENCY.labels("http", route, str(status)).observe(
                time.perf_counter() - started
            )

    def _too_large(self) -> tuple[int, dict, dict]:
        refused = Refused(
            RefusalKind.TOO_LARGE,
            "body_too_large",
            f"request bodies are at most {self.max_body_bytes} bytes",
            limit=self.max_body_bytes,
        )
        return refused.status, refused.to_json(), {}

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise Refused(
                    RefusalKind.TOO_LARGE,
                    "body_too_large",
                    "request body too large",
                    limit=self.max_body_bytes,
                )
            return message

        return limited_receive

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _feedback(
        self, headers: dict[bytes, bytes], receive: Receive
    ) -> tuple[int, dict, dict]:
        try:
            raw = await self._read_body(receive)
            body = _FEEDBACK_REQUEST.validate_json(raw)
            return await accept(
                self.core,
                body,
                _text(headers.get(b"authorization")),
                _text(headers.get(b"x-feedback-token")),
            )
        except _TooLarge:
            return self._too_large()
        except ValidationError as error:
            refused = invalid_request(validation_problems(error.errors(include_url=False)))
            return refused.status, refused.to_json(), {}
        except Refused as refused:
            return refused.status, refused.to_json(), {}
        except StorageUnavailable:
            refused = Refused(
                RefusalKind.UNAVAILABLE, "storage_unavailable", "the store could not commit; retry"
            )
            return refused.status, refused.to_json(), {"Retry-After": "1"}

    @staticmethod
    async def _reply(send: Send, status: int, body: dict, headers: dict[str, str]) -> None:
        payload = to_json(body)
        raw_headers = [_JSON, (b"content-length", str(len(payload)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
