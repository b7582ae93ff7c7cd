"""The chat page: plain HTML, CSS and JavaScript in ``static/``, served as files (no build step).

``/`` and ``/chat`` answer the page, ``/chat/static/...`` its script and style, and
``/chat/config.json`` what the page cannot know by itself: where the feedback service is (an
empty URL: on the page's own origin, behind the same Ingress).
The page talks to this gateway with the API key the user types (kept in the tab's
sessionStorage only) and to the feedback service with the feedback token of each answer.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from services.inference.gateway.settings import GatewaySettings

STATIC = Path(__file__).with_name("static")


def _origin(url: str) -> str:
    """``scheme://host:port`` of a URL; empty for an empty URL (the page's own origin)."""
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def add_chat_page(app: FastAPI, settings: GatewaySettings) -> None:
    # The page may call this gateway and the feedback service, and nothing else; it runs no
    # inline script, so an answer that contains markup can never run as code.
    connect = " ".join(filter(None, ["'self'", _origin(settings.feedback_public_url)]))
    policy = (
        f"default-src 'self'; connect-src {connect}; "
        "img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    headers = {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    @app.get("/", include_in_schema=False)
    @app.get("/chat", include_in_schema=False)
    async def chat_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=headers)

    @app.get("/chat/config.json", include_in_schema=False)
    async def chat_config() -> dict[str, str]:
        return {"feedback_url": settings.feedback_public_url.rstrip("/")}

    app.mount("/chat/static", StaticFiles(directory=STATIC), name="chat-static")
