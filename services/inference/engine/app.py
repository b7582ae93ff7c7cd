"""The engine's HTTP API: TGI's protocol, the OpenAI chat route, health and metrics.

Routes (as TGI serves them): ``POST /generate``, ``POST /generate_stream`` (server-sent
events), ``POST /`` (either, by its ``stream`` flag; TGI clients post here), ``GET /info``,
``GET /health`` (ready: a model is loaded), ``GET /metrics``; plus ``GET /livez`` (alive:
the event loop answers, however full the queue is) and ``POST /v1/chat/completions``
(services/inference/engine/chat.py). Every response carries ``X-Model-Version``.
Errors, whatever their cause (routing, method, body size, parsing, validation, generation):
``{"error": ..., "error_type": ...}`` with 404/405, 413 body too large, 422 validation,
424 generation, 429 overloaded, 503 not ready; 499 when the client left.

``tgi_request_count`` counts every request to a generation route as it arrives (a body that
does not parse too), so ``tgi_request_success`` + ``tgi_request_failure`` never exceed it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.body_limit import BodyLimit
from services.common.metrics import add_metrics_route
from services.common.openapi import SSE_CONTENT, error_responses
from services.inference.engine import metrics
from services.inference.engine.chat import add_chat_route
from services.inference.engine.params import (
    CompatGenerateRequest,
    GenerateRequest,
    ValidationFailed,
    check_parameters,
    describe_problem,
    requested_version,
)
from services.inference.engine.responses import GenerateResponse, Info
from services.inference.engine.runner import (
    ClientGone,
    Generation,
    GenerationError,
    NotReady,
    Runner,
)
from services.inference.engine.scheduler import Overloaded, Token

log = logging.getLogger(__name__)

VERSION_HEADER = "X-Model-Version"
GENERATION_ROUTES = frozenset({"/", "/generate", "/generate_stream", "/v1/chat/completions"})


class VersionHeader:
    """Adds ``X-Model-Version`` (the version serving now) to responses that do not name the
    version that answered them. Plain ASGI: Starlette's BaseHTTPMiddleware would hide a
    client's disconnect from the routes, which need it to cancel generation."""

    def __init__(self, app, policies) -> None:
        self.app = app
        self.policies = policies

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_version(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                policy = self.policies.current
                name = VERSION_HEADER.lower().encode()
                if policy is not None and all(k.lower() != name for k, _ in headers):
                    headers.append((name, policy.version.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_version)


class CountRequests:
    """Counts requests to the generation routes on arrival, before anything can refuse them."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        http = scope["type"] == "http"
        if http and scope["method"] == "POST" and scope["path"] in GENERATION_ROUTES:
            metrics.REQUEST_COUNT.inc()
        await self.app(scope, receive, send)


class ErrorBody(BaseModel):
    """TGI's error body."""

    error: str
    error_type: str


def error_body(status: int, error_type: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


def tgi_error(request: Request, status: int, error_type: str, message: str) -> JSONResponse:
    """An error answer; counted as a failed request when it answers a generation route."""
    if request.url.path in GENERATION_ROUTES and request.method == "POST":
        metrics.REQUEST_FAILURE.labels(error_type).inc()
    return error_body(status, error_type, message)


def _documented(*statuses: int) -> dict:
    return error_responses(ErrorBody, _STATUS_TEXT, *statuses)


_STATUS_TEXT = {
    413: "Body too large.",
    422: "Input validation error.",
    424: "Generation failed.",
    429: "Overloaded: too many requests queued or running.",
    499: "The client left; the generation was cancelled.",
    503: "No model loaded yet, or the engine is stalled.",
}
_GENERATION_ERRORS = _documented(413, 422, 424, 429, 499, 503)


def create_app(runner: Runner) -> FastAPI:
    app = FastAPI(title="Flywheel engine", version="1", docs_url=None, redoc_url=None)
    settings = runner.settings
    add_metrics_route(app)

    def too_large(limit: int) -> JSONResponse:
        metrics.REQUEST_FAILURE.labels("validation").inc()
        return error_body(413, "validation", f"Input validation error: body over {limit} bytes")

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, refuse=too_large)
    app.add_middleware(VersionHeader, policies=runner.policies)
    app.add_middleware(CountRequests)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        problems = "; ".join(describe_problem(e) for e in exc.errors())
        return tgi_error(request, 422, "validation", f"Input validation error: {problems}")

    @app.exception_handler(ValidationFailed)
    async def refused(request: Request, exc: ValidationFailed):
        return tgi_error(request, 422, "validation", f"Input validation error: {exc}")

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        return tgi_error(request, 429, "overloaded", "Model is overloaded")

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady):
        return tgi_error(request, 503, "unhealthy", str(exc))

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone):
        # Nobody reads it; 499 (nginx's "client closed request") keeps it out of 5xx alerts.
        return error_body(499, "cancelled", str(exc))

    @app.exception_handler(GenerationError)
    async def failed(request: Request, exc: GenerationError):
        return tgi_error(request, 424, "generation", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Unknown routes, wrong methods, bodies that are not JSON or not UTF-8.
        kinds = {404: "not_found", 405: "method_not_allowed"}
        status = exc.status_code
        if status == 400:  # FastAPI's "error parsing the body": TGI calls it validation
            return tgi_error(request, 422, "validation", f"Input validation error: {exc.detail}")
        return tgi_error(request, status, kinds.get(status, "http"), str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error answering %s", request.url.path)
        return tgi_error(request, 500, "internal", "the engine failed to answer; see its log")

    def stalled() -> bool:
        return not runner.scheduler.alive or runner.scheduler.stalled(settings.stall_timeout_s)

    @app.get("/health", responses={200: {"description": "Ready."}, **_documented(503)})
    async def health():
        if runner.policies.current is None or stalled():
            return error_body(503, "unhealthy", "the engine is not ready")
        return JSONResponse(None)

    @app.get("/livez", responses={200: {"description": "Alive."}, **_documented(503)})
    async def livez():
        # Red when the scheduler died or has work but made no step for stall_timeout_s:
        # an orchestrator restarts the process. A long queue alone is not a reason.
        if stalled():
            return error_body(503, "unhealthy", "the scheduler is stalled or dead")
        return {"status": "alive"}

    @app.get("/info", responses={200: {"model": Info}})
    async def info():
        policy, canary = runner.policies.current, runner.policies.canary
        return {
            "model_id": "policy",
            "model_version": policy.version if policy else None,
            "canary_version": canary[0].version if canary else None,
            "canary_share": canary[1] if canary else 0.0,
            "model_sha": None,
            "model_dtype": runner.policies.precision,
            "model_device_type": runner.policies.device.type,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": settings.max_concurrent_requests,
            "max_best_of": settings.max_best_of,
            "max_stop_sequences": settings.max_stop_sequences,
            "max_input_tokens": settings.max_input_tokens,
            "max_total_tokens": settings.max_total_tokens,
            "max_batch_size": settings.max_batch_size,
            "max_client_batch_size": 1,
            "validation_workers": 1,
            "router": "flywheel-engine",
            "version": "1",
            "sha": None,
            "docker_label": None,
        }

    async def generate(body: GenerateRequest, request: Request):
        started = time.perf_counter()
        prepared, best_of = _prepare(runner, body, streaming=False)
        metrics.VALIDATION_DURATION.observe(time.perf_counter() - started)
        # best_of > 1 forbids a seed, so each copy samples with its own random seed.
        runs = await asyncio.gather(
            *(runner.generate(prepared, request.is_disconnected) for _ in range(best_of))
        )
        best = max(runs, key=lambda run: sum(t.logprob for t in run.tokens))
        metrics.REQUEST_SUCCESS.inc()
        metrics.REQUEST_DURATION.observe(time.perf_counter() - started)
        text = _full_text(body, best.finished.generated_text)
        result = {"generated_text": text}
        if body.parameters.details:
            result["details"] = {
                **_details(best),
                "prefill": [],
                "tokens": [_token(t) for t in best.tokens],
                "top_tokens": None,
                "best_of_sequences": [
                    {
                        **_details(run),
                        "generated_text": _full_text(body, run.finished.generated_text),
                        "prefill": [],
                        "tokens": [_token(t) for t in run.tokens],
                        "top_tokens": None,
                    }
                    for run in runs
                    if run is not best
                ]
                or None,
            }
        return result, prepared.policy.version

    @app.post("/generate", responses={200: {"model": GenerateResponse}, **_GENERATION_ERRORS})
    async def generate_route(body: GenerateRequest, request: Request):
        result, version = await generate(body, request)
        return JSONResponse(result, headers={VERSION_HEADER: version})

    async def generate_stream(body: GenerateRequest, request: Request) -> StreamingResponse:
        started = time.perf_counter()
        prepared, _ = _prepare(runner, body, streaming=True)
        metrics.VALIDATION_DURATION.observe(time.perf_counter() - started)
        stream = runner.start(prepared)

        async def events():
            # Starlette stops this generator when the client goes away; runner.tokens then
            # cancels the generation, so an abandoned stream stops costing compute.
            index = 0
            try:
                async for token in runner.tokens(stream):
                    index += 1
                    event = {"index": index, "token": _token(token)}
                    event["generated_text"], event["details"] = None, None
                    if token.finished is not None:
                        event["generated_text"] = _full_text(body, token.finished.generated_text)
                        event["details"] = {
                            "finish_reason": token.finished.reason,
                            "generated_tokens": token.finished.generated_tokens,
                            "seed": token.finished.seed,
                            "input_length": token.finished.input_length,
                        }
                        metrics.REQUEST_SUCCESS.inc()
                        metrics.REQUEST_DURATION.observe(time.perf_counter() - started)
                    yield _sse(event)
            except GenerationError as exc:
                metrics.REQUEST_FAILURE.labels("generation").inc()
                yield _sse({"error": str(exc), "error_type": "generation"})

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={VERSION_HEADER: prepared.policy.version, "Cache-Control": "no-cache"},
        )

    @app.post(
        "/generate_stream",
        responses={
            200: {"description": "Server-sent events", "content": SSE_CONTENT},
            **_GENERATION_ERRORS,
        },
    )
    async def generate_stream_route(body: GenerateRequest, request: Request):
        return await generate_stream(body, request)

    @app.post(
        "/",
        responses={
            200: {
                "description": "A list of one result, or events when `stream` is true",
                "model": list[GenerateResponse],
                "content": SSE_CONTENT,
            },
            **_GENERATION_ERRORS,
        },
    )
    async def compat(body: CompatGenerateRequest, request: Request):
        if body.stream:
            return await generate_stream(body, request)
        result, version = await generate(body, request)
        return JSONResponse([result], headers={VERSION_HEADER: version})

    add_chat_route(app, runner, responses=_GENERATION_ERRORS, stream_content=SSE_CONTENT)
    return app


def _prepare(runner: Runner, body: GenerateRequest, *, streaming: bool):
    settings = runner.settings
    params = check_parameters(
        body.parameters,
        streaming=streaming,
        max_best_of=settings.max_best_of,
        max_stop_sequences=settings.max_stop_sequences,
        default_max_new_tokens=settings.default_max_new_tokens,
    )
    policy = runner.policy(requested_version(body.parameters))
    input_ids = list(policy.tokenizer(body.inputs, add_special_tokens=False)["input_ids"])
    if body.parameters.truncate:
        input_ids = input_ids[-body.parameters.truncate :]
    return runner.prepare(policy, input_ids, params), body.parameters.best_of or 1


def _full_text(body: GenerateRequest, text: str) -> str:
    return body.inputs + text if body.parameters.return_full_text else text


def _token(token: Token) -> dict:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def _details(run: Generation) -> dict:
    return {
        "finish_reason": run.finished.reason,
        "generated_tokens": run.finished.generated_tokens,
        "seed": run.finished.seed,
    }


def _sse(payload: dict) -> str:
    return "data:" + json.dumps(payload, separators=(",", ":")) + "\n\n"
