"""The duty console's page: index.html with security and caching headers.

The console is a static single-page app in `api/static/` (mounted at `/` by the app
factory, after this router, so the routes here win). It routes on the URL fragment
(`#/alerts/<id>`), so the only page the server serves is the index; this router adds what
StaticFiles cannot: a Content-Security-Policy that allows nothing but the app's own
origin (the console must work without the internet, so it loads nothing from elsewhere),
and `no-cache` so a browser revalidates the page after an upgrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import FileResponse

__all__ = ["CONTENT_SECURITY_POLICY", "router"]

INDEX: Final = Path(__file__).resolve().parent / "static" / "index.html"

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
    )
)

_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
@router.get("/index.html")
async def console_index() -> FileResponse:
    """The console's single page."""
    return FileResponse(INDEX, media_type="text/html; charset=utf-8", headers=_HEADERS)
