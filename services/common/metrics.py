"""Prometheus helpers shared by every service.

HTTP services add :func:`add_metrics_route` (``GET /metrics``); gRPC-only services and
workers call :func:`start_metrics_server` on their own port. Both expose the
same ``flywheel_build_info`` so a Grafana panel can show what runs where.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Info,
    generate_latest,
    start_http_server,
)

BUILD_INFO = Info("flywheel_build", "Flywheel build and runtime of this process.")


def package_version() -> str:
    try:
        return metadata.version("flywheel")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def set_build_info(service: str, **extra: str) -> None:
    """Label this process: service, package version, build, Python, plus any ``extra``.

    ``build`` comes from ``FLYWHEEL_BUILD`` (the image tag or git commit that the
    image build or the Helm chart sets), so two pods of one version can still be
    told apart when a build was redone.
    """
    BUILD_INFO.info(
        {
            "service": service,
            "version": package_version(),
            "build": os.environ.get("FLYWHEEL_BUILD", "dev"),
            "python": platform.python_version(),
            **extra,
        }
    )


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` from a background thread, for processes without an HTTP app."""
    start_http_server(port, addr=addr)


def add_metrics_route(app: FastAPI, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve the registry at ``GET /metrics`` of a FastAPI app (a route, not a mount: a mounted
    app answers ``/metrics`` with a redirect to ``/metrics/``, which scrapers need not follow)."""

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
