"""The HTML documents: the chat page at `/` (SPEC 16) and the API docs at `/docs` and `/redoc`
(SPEC 8), each with its own Content-Security-Policy, and their assets under `/static`.

The documents load every script and style from this backend; none has an inline script, so
`script-src 'self'` holds. The chat page's policy also enforces Trusted Types: the only HTML it
ever inserts comes from DOMPurify (its policy is named `dompurify`). Swagger UI and ReDoc set
style attributes and insert `<style>` elements as they render, so their pages allow inline
styles (never inline script)."""

from __future__ import annotations

import mimetypes
from functools import cache

from fastapi import APIRouter
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from alice.web import PAGES_DIR, STATIC_DIR

# Not every system's mime table knows .mjs; a module served as anything but JavaScript is
# refused by the browser.
mimetypes.add_type("text/javascript", ".mjs")

_COMMON = (
    "default-src 'none'",
    "script-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "font-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "object-src 'none'",
)
PAGE_CSP = "; ".join(
    (*_COMMON, "style-src 'self'", "require-trusted-types-for 'script'", "trusted-types dompurify")
)
# ReDoc builds its search index in a Web Worker made from a blob: URL.
DOCS_CSP = "; ".join((*_COMMON, "style-src 'self' 'unsafe-inline'", "worker-src 'self' blob:"))

router = APIRouter(include_in_schema=False)


@cache
def _document(name: str) -> bytes:
    return (PAGES_DIR / name).read_bytes()


def _html(name: str, csp: str) -> Response:
    return Response(
        _document(name),
        media_type="text/html",
        headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache"},
    )


@router.get("/")
async def chat_page() -> Response:
    """The chat page (SPEC 16)."""
    return _html("index.html", PAGE_CSP)


@router.get("/docs")
async def swagger_ui() -> Response:
    """Swagger UI over /openapi.json, from vendored assets."""
    return _html("docs.html", DOCS_CSP)


@router.get("/redoc")
async def redoc() -> Response:
    """ReDoc over /openapi.json, from vendored assets."""
    return _html("redoc.html", DOCS_CSP)


static_files = StaticFiles(directory=STATIC_DIR)
