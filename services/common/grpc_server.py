"""The one gRPC server bootstrap every service uses: health, reflection, graceful drain.

Typical use::

    server = GrpcServer(
        settings.grpc_host, settings.grpc_port, service_token=settings.resolved_service_token()
    )
    server.add(add_RewardServiceServicer_to_server, RewardServicer(scorer))
    server.start()
    scorer.load_weights()        # alive (health answers) but not ready until this is done
    server.set_serving(True)
    ...
    server.stop(drain_timeout=20)            # NOT_SERVING, refuse new calls, drain, cancel

Processes run it as one Part of their services.common.runtime.ServiceProcess.

Handlers should honour cancellation (``context.is_active()``, ``context.add_callback``): after
the drain timeout in-flight calls are cancelled, but Python cannot interrupt a thread, and a
handler that never returns keeps the process alive until it does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.service_auth import RequireServiceToken

log = logging.getLogger("flywheel.grpc")

MiB = 1024 * 1024

# Channel options every server gets; ``options=`` can override any of them by key.
DEFAULT_OPTIONS: dict[str, int] = {
    # gRPC's default receive limit is 4 MiB; a Score batch of long answers or an export page of
    # comparisons can pass that, so allow 32 MiB both ways. Bigger data belongs in a stream.
    "grpc.max_receive_message_length": 32 * MiB,
    "grpc.max_send_message_length": 32 * MiB,
    # Ping idle clients every 60 s and drop them after 20 s without an answer, so connections
    # half-closed by a NAT or a dead pod do not pile up.
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.keepalive_permit_without_calls": 1,
    # Accept client keepalive pings down to every 10 s (the default of 5 min makes the server
    # answer more frequent pings with GOAWAY "too_many_pings" and drop the connection).
    "grpc.http2.min_ping_interval_without_data_ms": 10_000,
    # gRPC sets SO_REUSEPORT by default, so a second server on the same port starts "fine" and
    # silently steals half the traffic; we want a port clash to fail loudly instead.
    "grpc.so_reuseport": 0,
}

# How long to wait for handlers to notice cancellation once the drain timeout has passed.
_CANCEL_WAIT_S = 5.0

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _RecordServiceNames:
    """Stands in for the ``grpc.Server`` a generated ``add_*_to_server`` registers with: passes
    the handlers on and notes the names of the services they serve."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server
        self.names: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)
        for handler in handlers:
            name = handler.service_name()
            if name not in self.names:
                self.names.append(name)

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        self._server.add_registered_method_handlers(name, handlers)
        if name not in self.names:
            self.names.append(name)


class GrpcServer:
    """A sync ``grpc.server`` with health, reflection, channel defaults and a graceful drain.

    Every call but health checks must present ``service_token`` (services/common/service_auth).
    ``host`` is where it listens: loopback by default; a pod listens on all interfaces.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        service_token: str,
        max_workers: int = 10,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._executor = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="grpc")
        self._server = grpc.server(
            self._executor,
            interceptors=[RequireServiceToken(service_token)],
            options=list({**DEFAULT_OPTIONS, **dict(options)}.items()),
        )
        self._address = f"{host}:{port}"
        self._port = 0  # 0 until started
        self._stopped = False
        self._names: list[str] = []
        # Non-blocking Watch: a watching client does not hold one of the worker threads.
        self._health = health.HealthServicer(experimental_non_blocking=True)
        # The servicer starts with "" SERVING; a service is not ready until its caller says so.
        self._health.set("", _NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0); 0 until ``start()``."""
        return self._port

    def add(self, register: Callable[[Any, grpc.Server], None], servicer: Any) -> None:
        """Register a servicer with its generated ``add_*_to_server``. The full service names
        that health and reflection report are read from what it registers, so they cannot
        drift from the proto."""
        self._check_not_started()
        recorder = _RecordServiceNames(self._server)
        register(servicer, recorder)
        if not recorder.names:
            raise ValueError(f"{register.__name__} registered no service")
        for name in recorder.names:
            self._track(name)

    def add_generic_handler(self, handler: grpc.ServiceRpcHandler) -> None:
        """Register a hand-built handler (``grpc.method_handlers_generic_handler``)."""
        self._check_not_started()
        self._server.add_generic_rpc_handlers((handler,))
        self._track(handler.service_name())

    def start(self) -> int:
        """Bind and start serving RPCs (health says NOT_SERVING until ``set_serving``)."""
        self._check_not_started()
        # Reflection is added last, when the full list of names is known.
        reflection.enable_server_reflection(
            [*self._names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self._port = self._server.add_insecure_port(self._address)  # RuntimeError if taken
        self._server.start()
        log.info("grpc server started on port %d", self._port, extra={"port": self._port})
        return self._port

    def alive(self) -> bool:
        """Started and not stopped."""
        return bool(self._port) and not self._stopped

    def set_serving(self, serving: bool = True) -> None:
        """Flip every health status (overall "" and each service) to SERVING or NOT_SERVING."""
        for name in ["", *self._names]:
            self._health.set(name, _SERVING if serving else _NOT_SERVING)

    def stop(self, drain_timeout: float) -> None:
        """Drain and stop; blocks until stopped. Safe to call more than once."""
        log.info("grpc server draining", extra={"drain_timeout_s": drain_timeout})
        # NOT_SERVING first (and for good: later set_serving calls are ignored) so load
        # balancers and probes stop sending; then refuse new calls and give in-flight ones up
        # to drain_timeout before they are cancelled. Open health Watch streams count as in
        # flight, so with a watcher connected the stop takes the whole drain_timeout.
        self._health.enter_graceful_shutdown()
        done = self._server.stop(grace=drain_timeout)
        if not done.wait(drain_timeout + _CANCEL_WAIT_S):
            log.warning("grpc handlers still running after cancellation; they ignore it")
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._stopped = True
        log.info("grpc server stopped", extra={"port": self._port})

    def _track(self, name: str) -> None:
        self._names.append(name)
        self._health.set(name, _NOT_SERVING)

    def _check_not_started(self) -> None:
        # Reflection and the handler list are fixed at start(); a late add would be invisible.
        if self._port:
            raise RuntimeError("add services before start()")
