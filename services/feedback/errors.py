"""Why the feedback service refused a request, in one exception both APIs translate.

HTTP answers ``status`` with ``{"error": {"code", "message", "details"}}``; gRPC maps the
same status to its code (see grpc_service.py). Codes are stable strings clients can branch on.
"""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    """A request the service will not carry out, with a client-facing reason."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class StorageUnavailable(Exception):
    """The database could not commit; nothing from the batch was acknowledged."""
