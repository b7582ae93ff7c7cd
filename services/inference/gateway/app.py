"""The public API: OpenAI's chat shape, API keys, rate limits, size limits, OpenAI's errors.

Routes: ``POST /v1/chat/completions`` (services/inference/gateway/chat.py), ``GET
/v1/models``, ``GET /v1/flywheel/status`` (status.py), the chat page at ``/`` and ``/chat``
(web/), ``GET /healthz`` (alive), ``GET /readyz`` (the engine answers), ``GET /metrics``.
Errors are ``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends them, so
its clients raise their usual exceptions: 400 invalid request, 401 bad key, 404/405 unknown
route or method, 413 body too large (declared or chunked), 429 rate limited (with
``Retry-After``), 500 a bug (logged, never a stack trace), 502/503 engine trouble. A
request is authenticated, then validated, then charged to the key's rate limit: one that can
never succeed costs nothing.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.api_keys import ApiKeyStore, KeyRecord, bearer_token
from services.common.body_limit import BodyLimit
from services.common.metrics import add_metrics_route
from services.common.openapi import SSE_CONTENT, error_responses
from services.inference.gateway import chat
from services.inference.gateway.engine_client import EngineFailed
from services.inference.gateway.http_metrics import RequestMetrics
from services.inference.gateway.rate_limit import (
    RateLimiter,
    RateLimitPolicy,
    retry_after_header,
)
from services.inference.gateway.settings import GatewaySettings
from services.inference.gateway.status import FlywheelStatus
from services.inference.gateway.web import add_chat_page

log = logging.getLogger(__name__)


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body."""

    error: OpenAIError


def openai_error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _documented(*statuses: int) -> dict:
    return error_responses(ErrorBody, _STATUS_TEXT, *statuses)


_STATUS_TEXT = {
    400: "Invalid request (also a body that is not JSON or not UTF-8).",
    401: "Missing or unknown API key.",
    413: "Body too large.",
    429: "Rate limit reached for the key (see Retry-After).",
    502: "The engine failed.",
    503: "The engine is not ready, overloaded or unreachable (see Retry-After).",
}


class _Refusal(Exception):
    """An error answer decided before the route's work (authentication, rate limit)."""

    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def create_app(
    settings: GatewaySettings,
    keys: ApiKeyStore,
    limiter: RateLimiter,
    deps: chat.ChatDeps,
) -> FastAPI:
    probe = httpx.AsyncClient(base_url=settings.engine_url, timeout=2.0)
    flywheel_status = FlywheelStatus(settings, probe)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # The clients hold connections (HTTP, gRPC, Redis) bound to this event loop: closed
        # here, on the loop, when the server shuts down.
        yield
        await flywheel_status.close()
        await probe.aclose()
        await deps.engine.close()
        await deps.router.close()
        await deps.reward.close()
        await limiter.aclose()

    app = FastAPI(title="Flywheel API", version="1", lifespan=lifespan)
    add_metrics_route(app)

    def too_large(limit: int) -> JSONResponse:
        return openai_error(413, f"request body over {limit} bytes", "invalid_request_error")

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, refuse=too_large)
    app.add_middleware(RequestMetrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid body"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return openai_error(400, first["msg"], "invalid_request_error", param=param)

    @app.exception_handler(chat.InvalidRequest)
    async def invalid_request(request: Request, exc: chat.InvalidRequest):
        return openai_error(400, str(exc), "invalid_request_error", param=exc.param)

    @app.exception_handler(EngineFailed)
    async def engine_failed(request: Request, exc: EngineFailed):
        kind = "invalid_request_error" if exc.status == 400 else "server_error"
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return openai_error(exc.status, exc.message, kind, exc.code, headers=headers)

    @app.exception_handler(_Refusal)
    async def refusal(request: Request, exc: _Refusal):
        return exc.response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Unknown routes, wrong methods, bodies FastAPI could not read as JSON (or UTF-8).
        if exc.status_code == 400:
            message = "We could not parse the JSON body of your request (it must be UTF-8 JSON)."
            return openai_error(400, message, "invalid_request_error")
        if exc.status_code in (404, 405):
            message = f"Invalid URL ({request.method} {request.url.path})"
            if exc.status_code == 405:
                message = f"Method {request.method} not allowed for {request.url.path}"
            return openai_error(exc.status_code, message, "invalid_request_error")
        return openai_error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error answering %s", request.url.path)
        return openai_error(500, "The server had an error processing your request.", "server_error")

    def authenticate(request: Request) -> KeyRecord:
        record = keys.authenticate(bearer_token(request.headers.get("authorization")))
        if record is None:
            raise _Refusal(
                openai_error(
                    401,
                    "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
            )
        return record

    async def charge(record: KeyRecord, cost: int) -> None:
        """Spend ``cost`` from the key's budget: only for requests that passed validation."""
        decision = await limiter.check(record.id, RateLimitPolicy.for_key(settings, record), cost)
        if not decision.allowed:
            raise _Refusal(
                openai_error(
                    429,
                    f"Rate limit reached for this key; retry in {retry_after_header(decision)} s.",
                    "requests",
                    "rate_limit_exceeded",
                    headers={"Retry-After": retry_after_header(decision)},
                )
            )

    @app.post(
        "/v1/chat/completions",
        responses={
            200: {
                "description": "A completion; with `stream: true`, server-sent events of chunks "
                "ending with `data: [DONE]`.",
                "content": SSE_CONTENT,
            },
            **_documented(400, 401, 413, 429, 502, 503),
        },
    )
    async def chat_completions(body: chat.ChatBody, request: Request):
        record = authenticate(request)
        sampling = chat.check(body, deps)  # before charging: a hopeless request costs nothing
        await charge(record, cost=max(body.n, body.best_of or 1))
        if body.stream:
            return chat.stream(body, sampling, record, deps)
        return JSONResponse(await chat.complete(body, sampling, record, deps))

    @app.get("/v1/models", responses=_documented(401, 429))
    async def models(request: Request):
        await charge(authenticate(request), cost=1)
        return {
            "object": "list",
            "data": [{"id": "policy", "object": "model", "created": 0, "owned_by": "flywheel"}],
        }

    @app.get(
        "/v1/flywheel/status",
        responses=_documented(401, 429),
        summary="The serving version, thumbs by version and recent trainer runs",
    )
    async def status(request: Request):
        await charge(authenticate(request), cost=1)
        return await flywheel_status.current()

    add_chat_page(app, settings)

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", responses={503: {"description": "The engine is not ready."}})
    async def readyz():
        try:
            engine = await probe.get("/health")
        except httpx.HTTPError as exc:
            return JSONResponse({"status": "engine unreachable", "detail": str(exc)}, 503)
        if engine.status_code != 200:
            return JSONResponse({"status": "engine not ready"}, 503)
        return {"status": "ready"}

    return app
