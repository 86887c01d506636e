"""The edge of every request, as one pure ASGI middleware (no per-request task or copy):
request id, header- and body-size limits, rate-limit and security headers, the access log and
the last-resort 500. (What `alice serve` bounds before the app sees a request, its HTTP
protocol, is in `alice.core.protocol`.)"""

from __future__ import annotations

import json
import logging
import re
import time
from random import getrandbits
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alice.core.errors import ErrorCode, error_body
from alice.core.logging import request_id_var, user_id_var

MAX_BODY_BYTES = 256 * 1024
# The request target plus every header's name and value. A bearer token is ~500 bytes;
# nginx's default allows 4 x 8 KiB. Past it: 431, with the spec's error body.
MAX_HEADER_BYTES = 32 * 1024
HEADERS_TOO_LARGE_DETAIL = "The request headers are too large."
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

access_log = logging.getLogger("alice.access")
error_log = logging.getLogger("alice.error")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, on_response: Any = None) -> None:
        self.app = app
        self.on_response = on_response  # callback(method, route, status, seconds) for metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        head = _Head(scope)
        request_id = head.request_id
        token = request_id_var.set(request_id)
        user_token = user_id_var.set(None)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        response_started = False
        rejected = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if rejected:
                return  # the 413 went out already; whatever the app says now is dropped
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                _add_security_headers(headers)
                for name, value in (state.get("ratelimit_headers") or {}).items():
                    headers.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if head.size > MAX_HEADER_BYTES:
                await _send_error(
                    send_wrapper, 431, ErrorCode.PAYLOAD_TOO_LARGE, HEADERS_TOO_LARGE_DETAIL
                )
                return
            length = head.content_length
            if length is not None and length > MAX_BODY_BYTES:
                await _send_error(send_wrapper, 413, ErrorCode.PAYLOAD_TOO_LARGE)
                return
            received = 0

            async def receive_wrapper() -> Message:
                # A body without Content-Length is counted as it arrives; past the limit the
                # 413 is sent at once and the app is told the client left.
                nonlocal received, rejected
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > MAX_BODY_BYTES:
                        if not response_started:
                            await _send_error(send_wrapper, 413, ErrorCode.PAYLOAD_TOO_LARGE)
                        rejected = True
                        return {"type": "http.disconnect"}
                return message

            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            error_log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not response_started:
                await _send_error(send_wrapper, 500, ErrorCode.INTERNAL_ERROR)
        finally:
            duration = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            # The user, once a dependency authenticated one (request.state.user_id).
            user_id = state.get("user_id")
            if user_id:
                user_id = str(user_id)
                user_id_var.set(user_id)
            access_log.info(
                "%s %s %s %.1fms%s",
                scope["method"],
                route,
                status,
                duration * 1000,
                f" user={user_id}" if user_id else "",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(duration * 1000, 2),
                },
            )
            if self.on_response is not None:
                self.on_response(scope["method"], route, status, duration)
            request_id_var.reset(token)
            user_id_var.reset(user_token)


# SPEC section 8. Every response: no MIME sniffing, no referrer, never framed. An API response
# (JSON, a stream, an error, a static asset) gets a policy that allows nothing; an HTML
# document sets its own policy (the pages that need scripts allow exactly theirs) and is left
# with it; an HTML document without one is still never framed.
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
API_CSP = b"default-src 'none'; frame-ancestors 'none'"
_HTML_FALLBACK_CSP = b"frame-ancestors 'none'"


def _add_security_headers(headers: list[tuple[bytes, bytes]]) -> None:
    html = has_policy = False
    for name, value in headers:
        if name == b"content-security-policy":
            has_policy = True
        elif name == b"content-type" and value[:9].lower() == b"text/html":
            html = True
    headers.extend(_SECURITY_HEADERS)
    if not has_policy:
        headers.append((b"content-security-policy", _HTML_FALLBACK_CSP if html else API_CSP))


class _Head:
    """What the edge needs of a request's head, in one pass over its headers: the request id
    (the client's when sane, else a new one), the head's size, and Content-Length."""

    __slots__ = ("request_id", "size", "content_length")

    def __init__(self, scope: Scope) -> None:
        request_id: str | None = None
        content_length: int | None = None
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        seen_id = seen_length = False
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"x-request-id" and not seen_id:
                seen_id = True
                candidate = value.decode("latin-1")
                if _SANE_REQUEST_ID.match(candidate):
                    request_id = candidate
            elif name == b"content-length" and not seen_length:
                seen_length = True
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
        # A made id: 128 random bits as 32 hex digits, the form uuid4().hex had. It needs to be
        # unique, not secret (a client may send its own): from the process's generator, which
        # is seeded afresh in every process, not from the kernel's (a syscall each, ~3 % of
        # a request's CPU under load).
        self.request_id = request_id or f"{getrandbits(128):032x}"
        self.size = size
        self.content_length = content_length


async def _send_error(send: Send, status: int, code: ErrorCode, detail: str | None = None) -> None:
    body = json.dumps(error_body(code, detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
