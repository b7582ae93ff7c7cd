"""The service credential: what internal gRPC calls present, and what servers check.

Internal APIs (feedback's RecordInteraction, GetInteraction, ExportComparisons and Stats;
reward's Score; every ModelAdmin) serve other services, never end users. Each call carries
``authorization: Bearer <service token>`` in its metadata; a server refuses any other call
with UNAUTHENTICATED, except gRPC health checks (probes cannot send metadata, and health says
nothing about data).

Why a shared secret rather than mTLS: it works the same on loopback and in a cluster, needs no
certificate authority or rotation tooling, and is one Kubernetes Secret. It authenticates
callers; it does not encrypt. In a cluster, encryption in transit belongs to the network
(a service mesh's mTLS, or NetworkPolicies keeping the ports private) in the deployment.

Where the token comes from (:func:`resolve_service_token`): ``FLYWHEEL_SERVICE_TOKEN`` (a
Secret as an environment variable), else the file ``FLYWHEEL_SERVICE_TOKEN_FILE`` (default
``<data dir>/service-token``, a mounted Secret or the local stack's file). A process that finds
neither creates the file (mode 0600) with a fresh random token: every process of a local stack
shares the data folder and so the token, and a process elsewhere with a different token is
refused rather than let in.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections import namedtuple
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

METADATA_KEY = "authorization"
TOKEN_PREFIX = "fws_"
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
REFUSAL = (
    "this internal API needs the service credential: send metadata "
    "'authorization: Bearer <token>' (FLYWHEEL_SERVICE_TOKEN or the service-token file)"
)


def new_service_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def resolve_service_token(value: str | None, path: Path) -> str:
    """``value`` if set; else the token in ``path``, created there if the file is missing.

    Creation is race-free: the token is written to a private temporary file that is then
    hard-linked into place, which fails if another process got there first (whose token
    every process then reads).
    """
    if value:
        return value.strip()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(new_service_token() + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(draft, path)
            log.info("created a service token in %s", path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise RuntimeError(f"the service token file {path} is empty")
    return token


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return ((METADATA_KEY, f"Bearer {token}"),)


# ---- server side ----------------------------------------------------------------------------


class RequireServiceToken(grpc.ServerInterceptor):
    """Refuses every call without the service token (health checks aside)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("a service token is required")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == METADATA_KEY:
                presented = value if isinstance(value, str) else value.decode("latin-1")
        if hmac.compare_digest(presented.encode("utf-8", "replace"), self._expected):
            return handler
        return _refusing(handler)


def _refuse(_request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that refuses the call."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_refuse, **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_refuse, **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_refuse, **codec)
    return grpc.stream_stream_rpc_method_handler(_refuse, **codec)


# ---- client side ----------------------------------------------------------------------------

_CallDetails = namedtuple(
    "_CallDetails",
    ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
)


def _with_token(details, token: str):
    metadata = [*(details.metadata or ()), *bearer(token)]
    return _CallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        details.wait_for_ready,
        details.compression,
    )


class _AddToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_with_token(details, self._token), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(_with_token(details, self._token), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(_with_token(details, self._token), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(_with_token(details, self._token), requests)


def service_channel(target: str, token: str, options=None) -> grpc.Channel:
    """A channel to an internal service whose every call presents ``token``."""
    return grpc.intercept_channel(grpc.insecure_channel(target, options=options), _AddToken(token))


class _AddTokenAio(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_token_aio(details, self._token), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with_token_aio(details, self._token), request)


def _with_token_aio(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *bearer(token))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def aio_service_channel(target: str, token: str, options=None) -> grpc.aio.Channel:
    """The asyncio flavour of :func:`service_channel` (make it inside the loop that uses it)."""
    return grpc.aio.insecure_channel(target, options=options, interceptors=[_AddTokenAio(token)])
