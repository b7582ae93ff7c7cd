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
