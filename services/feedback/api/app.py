"""The HTTP API: POST /v1/feedback, GET /v1/feedback/{id}, GET /v1/interactions/{id}.

Every error is a JSON body ``{"error": {"code", "message", "details"}}`` with a 4xx status
(5xx only when the store itself fails).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from services.common.metrics import add_metrics_route
from services.feedback.api.ingest import (
    Edge,
    accept,
    credential,
    invalid_request,
    validation_problems,
)
from services.feedback.api.schemas import (
    ErrorResponse,
    FeedbackEvent,
    FeedbackRequest,
    InteractionOut,
)
from services.feedback.core import FeedbackCore
from services.feedback.errors import Refused, StorageUnavailable

_ERRORS = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 410, 413, 422, 503)
}


def _error(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status)


def create_app(core: FeedbackCore) -> ASGIApp:
    settings = core.settings
    app = FastAPI(
        title="Flywheel feedback",
        version="1",
        description="Thumbs, rankings and pairwise votes on served answers. Authenticate with "
        "the API key that received the answers (Authorization: Bearer ...) or with the "
        "feedback token returned with them (X-Feedback-Token).",
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
        refused = invalid_request(validation_problems(error.errors(), prefix=()))
        return JSONResponse(refused.to_json(), status_code=refused.status)

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
        # Edge (ingest.py) answers this route before FastAPI sees it; this declaration gives
        # the OpenAPI document and serves if Edge is ever bypassed. Both run ingest.accept.
        status, event, headers = await accept(core, body, authorization, x_feedback_token)
        return JSONResponse(event, status_code=status, headers=headers)

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
        return JSONResponse(core.get_event(event_id, credential(authorization, x_feedback_token)))

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
        row = core.get_interaction(response_id, credential(authorization, x_feedback_token))
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

    add_metrics_route(app)

    edge = Edge(app, core)
    if not settings.cors_origins:
        return edge
    # Outside Edge, so the fast path's answers carry the CORS headers too.
    return CORSMiddleware(
        edge,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "X-Feedback-Token", "Authorization"],
        expose_headers=["Location", "Idempotent-Replayed"],
        max_age=600,
    )
