"""The public API: OpenAI's chat shape, API keys, rate limits, size limits, OpenAI's errors.

Routes: ``POST /v1/chat/completions`` (services/inference/gateway/chat.py), ``GET
/v1/models``, ``GET /healthz`` (alive), ``GET /readyz`` (the engine answers), ``GET
/metrics``. Errors are ``{"error": {"message", "type", "param", "code"}}`` as OpenAI
sends them, so its clients raise their usual exceptions: 400 invalid request, 401 bad
key, 413 body too large, 429 rate limited (with ``Retry-After``), 502/503 engine trouble.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.common.metrics import add_metrics_route
from services.inference.gateway import chat
from services.inference.gateway.api_keys import ApiKeyStore, bearer_token
from services.inference.gateway.engine_client import EngineFailed
from services.inference.gateway.rate_limit import (
    RateLimiter,
    RateLimitPolicy,
    retry_after_header,
)
from services.inference.gateway.settings import GatewaySettings


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


class BodyLimit:
    """Refuses bodies over ``limit`` bytes with 413 before anything parses them."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = openai_error(
                413, f"request body over {self.limit} bytes", "invalid_request_error"
            )
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            response = openai_error(
                413, f"request body over {self.limit} bytes", "invalid_request_error"
            )
            await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(
    settings: GatewaySettings,
    keys: ApiKeyStore,
    limiter: RateLimiter,
    deps: chat.ChatDeps,
) -> FastAPI:
    app = FastAPI(title="Flywheel API", version="1")
    add_metrics_route(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    probe = httpx.AsyncClient(base_url=settings.engine_url, timeout=2.0)

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

    async def authorize(request: Request, cost: int):
        """The caller's key record, or the error response to send."""
        record = keys.authenticate(bearer_token(request.headers.get("authorization")))
        if record is None:
            return None, openai_error(
                401,
                "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                "invalid_request_error",
                "invalid_api_key",
            )
        decision = await limiter.check(record.id, RateLimitPolicy.for_key(settings, record), cost)
        if not decision.allowed:
            return None, openai_error(
                429,
                f"Rate limit reached for this key; retry in {retry_after_header(decision)} s.",
                "requests",
                "rate_limit_exceeded",
                headers={"Retry-After": retry_after_header(decision)},
            )
        return record, None

    @app.post("/v1/chat/completions")
    async def chat_completions(body: chat.ChatBody, request: Request):
        record, refusal = await authorize(request, cost=max(body.n, body.best_of or 1))
        if refusal is not None:
            return refusal
        if body.stream:
            return chat.stream(body, record, deps)
        return JSONResponse(await chat.complete(body, record, deps))

    @app.get("/v1/models")
    async def models(request: Request):
        record, refusal = await authorize(request, cost=1)
        if refusal is not None:
            return refusal
        return {
            "object": "list",
            "data": [{"id": "policy", "object": "model", "created": 0, "owned_by": "flywheel"}],
        }

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        try:
            engine = await probe.get("/health")
        except httpx.HTTPError as exc:
            return JSONResponse({"status": "engine unreachable", "detail": str(exc)}, 503)
        if engine.status_code != 200:
            return JSONResponse({"status": "engine not ready"}, 503)
        return {"status": "ready"}

    return app
