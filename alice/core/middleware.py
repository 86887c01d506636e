"""The edge of every request, as one pure ASGI middleware (no per-request task or copy):
request id, body-size limit, rate-limit headers, the access log and the last-resort 500."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alice.core.errors import ErrorCode, error_body
from alice.core.logging import request_id_var, user_id_var

MAX_BODY_BYTES = 256 * 1024
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
        request_id = _request_id(scope)
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
                for name, value in (state.get("ratelimit_headers") or {}).items():
                    headers.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            length = _content_length(scope)
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
            if user_id := state.get("user_id"):
                user_id_var.set(str(user_id))
            access_log.info(
                "%s %s %s %.1fms",
                scope["method"],
                route,
                status,
                duration * 1000,
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


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, status: int, code: ErrorCode) -> None:
    body = json.dumps(error_body(code)).encode()
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
