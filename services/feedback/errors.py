"""Why the feedback service refused a request: a kind, a stable code and a message.

The rules (store/, core.py) say what kind of refusal it is, never a protocol's status; each
front end maps kinds at its edge: :data:`HTTP_STATUS` for the HTTP API (answered with
``{"error": {"code", "message", "details"}}``), :data:`GRPC_CODE` for gRPC. Codes are stable
strings clients can branch on.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import grpc


class RefusalKind(Enum):
    INVALID = "invalid"  # the request itself is wrong
    BAD_WINDOW = "bad_window"  # an export window that selects nothing
    UNAUTHENTICATED = "unauthenticated"  # no credential, or a revoked one
    FORBIDDEN = "forbidden"  # a credential, but not for this
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # clashes with what is stored (retry later, or never)
    EXPIRED = "expired"  # too late to rate
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"  # the store cannot answer now


HTTP_STATUS = {
    RefusalKind.INVALID: 422,
    RefusalKind.BAD_WINDOW: 400,
    RefusalKind.UNAUTHENTICATED: 401,
    RefusalKind.FORBIDDEN: 403,
    RefusalKind.NOT_FOUND: 404,
    RefusalKind.CONFLICT: 409,
    RefusalKind.EXPIRED: 410,
    RefusalKind.TOO_LARGE: 413,
    RefusalKind.UNAVAILABLE: 503,
}
GRPC_CODE = {
    RefusalKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    RefusalKind.BAD_WINDOW: grpc.StatusCode.INVALID_ARGUMENT,
    RefusalKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    RefusalKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    RefusalKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    RefusalKind.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    RefusalKind.EXPIRED: grpc.StatusCode.FAILED_PRECONDITION,
    RefusalKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RefusalKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


class Refused(Exception):
    """A request the service will not carry out, with a client-facing reason."""

    def __init__(self, kind: RefusalKind, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        """The HTTP status of this refusal."""
        return HTTP_STATUS[self.kind]

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class StorageUnavailable(Exception):
    """The database could not commit; nothing from the batch was acknowledged."""
