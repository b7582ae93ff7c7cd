"""Serving an ASGI app with uvicorn on a thread of a service process.

The services run HTTP beside other work (a gRPC server, a writer, a model loop), so
uvicorn runs on its own thread, and the service decides when it starts taking requests
and drains them on shutdown.
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

log = logging.getLogger(__name__)


class HttpServerThread:
    def __init__(self, app, host: str, port: int, drain_timeout_s: float) -> None:
        self._drain_timeout_s = drain_timeout_s
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                loop="uvloop",
                http="httptools",
                log_config=None,
                access_log=False,
                # No X-Forwarded-* rewriting (nothing here uses the client address) and no
                # Server header: two fewer steps on every request.
                proxy_headers=False,
                server_header=False,
                timeout_graceful_shutdown=drain_timeout_s,
            )
        )
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._requested_port = port

    @property
    def port(self) -> int:
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; returns once the socket is bound (RuntimeError if it is not)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"HTTP server did not start on port {self._requested_port}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop taking requests and let those in flight finish within the drain timeout."""
        self._server.should_exit = True
        self._thread.join(self._drain_timeout_s + 5)
