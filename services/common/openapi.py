"""OpenAPI pieces the HTTP services share."""

from __future__ import annotations

# A streamed answer: server-sent events, each with a `data` line holding one JSON document
# (the route's description says which). Tools that read the document (clients' generators,
# schema fuzzers) check each event against this.
SSE_CONTENT = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": "One server-sent event; `data` holds a JSON document (or [DONE]).",
            "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
            "required": ["data"],
        }
    }
}


def error_responses(model: type, descriptions: dict[int, str], *statuses: int) -> dict:
    """``responses=`` for a route: each status with the service's error body and a sentence."""
    return {status: {"model": model, "description": descriptions[status]} for status in statuses}
