"""Refusing request bodies over a size limit, before anything parses them.

A declared ``Content-Length`` over the limit is refused at once. A chunked body (no length)
is read up to the limit and refused as soon as it passes it; a body within the limit is
handed on to the app unchanged. Reading it first matters: frameworks catch errors raised
while they read the body and turn them into their own generic 400, so a limit enforced
from inside ``receive`` would never reach the client as a 413.

Each service passes ``refuse(limit)``, which builds the refusal in its own clients' error
shape (OpenAI's on the gateway, TGI's on the engine).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int, refuse: Callable[[int], Response]) -> None:
        self.app, self.limit, self.refuse = app, limit, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self.refuse(self.limit)(scope, receive, send)
        if declared is not None:  # within the limit, and the server enforces the length
            return await self.app(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return await self.app(scope, _replay([message], receive), send)
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await self.refuse(self.limit)(scope, receive, send)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(first: list[Message], receive: Receive) -> Receive:
    """``receive`` that gives ``first`` back, then goes on with the real one (disconnects)."""
    pending = list(first)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
