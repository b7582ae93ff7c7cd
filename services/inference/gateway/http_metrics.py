"""Request metrics of the public API, measured at the ASGI edge so that every answer counts:
refusals by the body limit, routing errors and answers that fail mid-stream alike.

- ``flywheel_gateway_requests_total{route,method,status}``: answers by route and status.
- ``flywheel_gateway_request_duration_seconds{route}``: until the last byte of the answer.
- ``flywheel_gateway_requests_in_flight{route}``: requests being answered now.
- ``flywheel_gateway_time_to_first_token_seconds``: streamed chats, until the first chunk
  with text (observed in chat.py, which knows what a token is).

Routes are the app's own paths; any other path counts as ``other``, so scanners cannot blow
up the label set.
"""

from __future__ import annotations

import functools
import time

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ROUTES = frozenset({"/v1/chat/completions", "/v1/models", "/healthz", "/readyz", "/metrics"})

REQUESTS = Counter(
    "flywheel_gateway_requests",
    "HTTP answers by route, method and status.",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "flywheel_gateway_request_duration_seconds",
    "Time from request to the last byte of its answer, by route.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "flywheel_gateway_requests_in_flight", "Requests being answered now, by route.", ["route"]
)
TIME_TO_FIRST_TOKEN = Histogram(
    "flywheel_gateway_time_to_first_token_seconds",
    "Streamed chat completions: time from request to the first chunk with text.",
    buckets=LATENCY_BUCKETS,
)


class RequestMetrics:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        started = time.perf_counter()
        status = 500  # if the app fails before it starts an answer

        async def measured_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_flight, duration = _route_metrics(route)
        in_flight.inc()
        try:
            await self.app(scope, receive, measured_send)
        finally:
            in_flight.dec()
            REQUESTS.labels(route, scope["method"], str(status)).inc()
            duration.observe(time.perf_counter() - started)


@functools.cache
def _route_metrics(route: str):
    """A route's in-flight gauge and latency histogram (the label lookup done once)."""
    return IN_FLIGHT.labels(route), DURATION.labels(route)
