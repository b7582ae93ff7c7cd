"""gRPC errors with details: INVALID_ARGUMENT carries a google.rpc.BadRequest naming each field.

Clients read the details with ``grpc_status.rpc_status.from_call(error)``; plain clients still
get a readable message.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


def invalid_argument(violations: Iterable[tuple[str, str]]) -> grpc.Status:
    """A status for ``abort_with_status`` listing (field, what is wrong) pairs."""
    violations = list(violations)
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    message = "; ".join(f"{f}: {d}" for f, d in violations)
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
    )


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of an INVALID_ARGUMENT raised by :func:`invalid_argument`."""
    status = rpc_status.from_call(error)
    found = []
    for detail in status.details if status else []:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found
