"""The HTTP API: POST /v1/feedback, GET /v1/feedback/{id}, GET /v1/interactions/{id}.

Every error is a JSON body ``{"error": {"code", "message", "details"}}`` with a 4xx status
(5xx only when the store itself fails).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Body, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from services.common.credentials import api_key_id
from services.feedback import metrics
from services.feedback.api.schemas import (
    ErrorResponse,
    FeedbackEvent,
    FeedbackRequest,
    InteractionOut,
    RankingFeedback,
    ThumbFeedback,
)
from services.feedback.core import FeedbackCore
from services.feedback.errors import Refused, StorageUnavailable
from services.feedback.store.feedback import Credential, FeedbackCommand

_ERRORS = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 410, 413, 422, 503)
}


def _error(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse(Refused(status, code, message, **details).to_json(), status_code=status)


def _credential(authorization: str | None, feedback_token: str | None) -> Credential:
    if authorization:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Refused(401, "bad_authorization", "use 'Authorization: Bearer <API key>'")
        return Credential(api_key_id=api_key_id(secret.strip()))
    if feedback_token:
        return Credential(feedback_token=feedback_token)
    return Credential()


def _command(
    body: FeedbackRequest, credential: Credential, max_comment: int, max_k: int
) -> FeedbackCommand:
    payload = body.model_dump(exclude={"kind", "client_event_id", "feedback_token"})
    if isinstance(body, ThumbFeedback) and body.comment and len(body.comment) > max_comment:
        raise Refused(
            422,
            "comment_too_long",
            f"comments are at most {max_comment} characters",
            length=len(body.comment),
            limit=max_comment,
        )
    if isinstance(body, RankingFeedback):
        size = sum(len(tier) for tier in body.ranking)
        if size > max_k:
            raise Refused(
                422,
                "ranking_too_long",
                f"a ranking orders at most {max_k} answers",
                size=size,
                limit=max_k,
            )
    return FeedbackCommand(body.kind, payload, credential, body.client_event_id)


class _Observe:
    """Pure ASGI middleware: request latency by route, and the request body size cap."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            response = _error(
                413,
                "body_too_large",
                f"request bodies are at most {self.max_body_bytes} bytes",
                limit=self.max_body_bytes,
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise Refused(
                    413, "body_too_large", "request body too large", limit=self.max_body_bytes
                )
            return message

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_and_note)
        finally:
            route = scope.get("route")
            metrics.REQUEST_LATENCY.labels(
                "http", getattr(route, "path", "unmatched"), str(status["code"])
            ).observe(time.perf_counter() - started)


def create_app(core: FeedbackCore) -> ASGIApp:
    settings = core.settings
    app = FastAPI(
        title="Flywheel feedback",
        version="1",
        description="Thumbs, rankings and pairwise votes on served answers. Authenticate with "
        "the API key that received the answers (Authorization: Bearer ...) or with the "
        "feedback token returned with them (X-Feedback-Token).",
    )

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-Feedback-Token", "Authorization"],
            expose_headers=["Location", "Idempotent-Replayed"],
            max_age=600,
        )

    @app.exception_handler(Refused)
    async def _refused(_request: Request, refused: Refused) -> JSONResponse:
        return JSONResponse(refused.to_json(), status_code=refused.status)

    @app.exception_handler(StorageUnavailable)
    async def _storage(_request: Request, error: StorageUnavailable) -> JSONResponse:
        response = _error(503, "storage_unavailable", "the store could not commit; retry")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        # Logged where it happened (the writer logs failed writes); the client gets JSON too.
        return _error(500, "internal_error", "the service failed to handle this request")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"], "type": e["type"]}
            for e in error.errors()
        ]
        return _error(
            422, "invalid_request", "the request does not match the API schema", errors=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(
            error.status_code, codes.get(error.status_code, "http_error"), str(error.detail)
        )

    @app.post(
        "/v1/feedback",
        status_code=201,
        response_model=None,
        responses={
            201: {"model": FeedbackEvent, "description": "Recorded."},
            200: {"model": FeedbackEvent, "description": "A retry: the stored event."},
            **_ERRORS,
        },
        summary="Record a thumb, a ranking or a pairwise vote",
    )
    async def post_feedback(
        body: Annotated[FeedbackRequest, Body()],
        authorization: Annotated[str | None, Header()] = None,
        x_feedback_token: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        credential = _credential(authorization, x_feedback_token or body.feedback_token)
        command = _command(body, credential, settings.max_comment_chars, settings.max_candidates)
        accepted = await core.submit_feedback(command)
        event = accepted.event
        headers = {"Location": f"/v1/feedback/{event['id']}"}
        if accepted.replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(event, status_code=200 if accepted.replayed else 201, headers=headers)

    @app.get(
        "/v1/feedback/{event_id}",
        response_model=None,
        responses={200: {"model": FeedbackEvent}, **_ERRORS},
        summary="A recorded feedback event",
    )
    def get_feedback(
        event_id: str,
        authorization: Annotated[str | None, Header()] = None,
        x_feedback_token: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        return JSONResponse(core.get_event(event_id, _credential(authorization, x_feedback_token)))

    @app.get(
        "/v1/interactions/{response_id}",
        response_model=InteractionOut,
        responses=_ERRORS,
        summary="A served answer, as recorded",
    )
    def get_interaction(
        response_id: str,
        authorization: Annotated[str | None, Header()] = None,
        x_feedback_token: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        row = core.get_interaction(response_id, _credential(authorization, x_feedback_token))
        return {**row, "created_at": row["created_at"].isoformat()}

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        try:
            core.stats_ping()
        except Exception as error:
            return _error(503, "not_ready", f"store unreachable: {error}")
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return _Observe(app, settings.max_body_bytes)
