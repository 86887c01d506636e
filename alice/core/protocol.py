"""The HTTP protocol of `alice serve`: uvicorn's httptools protocol, bounded so that no client
can exhaust the process (SPEC section 11) before the app sees a request.

uvicorn closes an idle keep-alive connection after 5 s, but has no limit for a connection
that never sends a whole request head: a socket that sends nothing, or half a head, or half a
body, stays open for as long as the client likes, and a few thousand of them use up the
process's file descriptors. What this protocol adds, per connection:

- a deadline for the request head: ALICE_REQUEST_HEAD_TIMEOUT_SECONDS (10) from the
  connection's start for its first request, from the first byte of each later one; not met,
  the connection is closed;
- a stall limit for the body: while the request's body is unfinished, no byte for that long
  closes the connection (the app sees the client gone);
- a bound on the head's size: past MAX_HEADER_BYTES (plus a little) without the end of the
  head, 431 with the spec's error body, then a lingering close;
- a cap on connections: one that arrives while ALICE_MAX_CONNECTIONS (default 80 % of the
  open-file limit) are open in this process is answered 503 `SERVER_BUSY` at once and closed,
  so the process always keeps descriptors for its database, Redis and the AI provider.

uvicorn's own `limit_concurrency` was the first choice for the cap, and is not used: it
answers only once a whole request head has arrived (a silent socket past the cap kept its
descriptor until the head timeout), and in `text/plain`. The same cap, checked when the
connection is made, is the rule of SPEC 11.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard]

from alice.core.config import get_settings
from alice.core.errors import ErrorCode, error_body
from alice.core.middleware import HEADERS_TOO_LARGE_DETAIL, MAX_HEADER_BYTES

log = logging.getLogger("alice.server")

# A refused connection is answered, its side ended, then what the client still sends is read
# and dropped for a moment (as nginx's lingering close): a client still sending its request
# gets the answer rather than a reset that discards it.
_LINGER_SECONDS = 2.0
_REFUSED_LINGER_SECONDS = 1.0
_WARN_EVERY_SECONDS = 10.0
MAX_CONNECTIONS_SHARE = 0.8


def _raw_response(
    status: int, reason: bytes, code: ErrorCode, detail: str, extra: bytes = b""
) -> bytes:
    body = json.dumps(error_body(code, detail)).encode()
    return (
        b"HTTP/1.1 " + str(status).encode() + b" " + reason + b"\r\n" + extra + b""
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"x-content-type-options: nosniff\r\n"
        b"referrer-policy: no-referrer\r\n"
        b"x-frame-options: DENY\r\n"
        b"content-security-policy: default-src 'none'; frame-ancestors 'none'\r\n"
        b"connection: close\r\n\r\n" + body
    )


HEADERS_TOO_LARGE_RESPONSE = _raw_response(
    431,
    b"Request Header Fields Too Large",
    ErrorCode.PAYLOAD_TOO_LARGE,
    HEADERS_TOO_LARGE_DETAIL,
)
TOO_MANY_CONNECTIONS_DETAIL = "The server has too many open connections; try again shortly."
TOO_MANY_CONNECTIONS_RESPONSE = _raw_response(
    503,
    b"Service Unavailable",
    ErrorCode.SERVER_BUSY,
    TOO_MANY_CONNECTIONS_DETAIL,
    extra=b"retry-after: 1\r\n",
)


def default_max_connections() -> int:
    """80 % of this process's open-file limit (read after `alice serve` raised it)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1_000_000
    return max(1, int(soft * MAX_CONNECTIONS_SHARE))


@cache
def connection_limits() -> tuple[float, int]:
    """(head timeout in seconds, connection cap) of this process, from its settings."""
    settings = get_settings()
    cap = settings.max_connections or default_max_connections()
    return settings.request_head_timeout_seconds, cap


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of the module docstring."""

    _head_bytes = 0
    _in_head = True
    _refused = False
    # The time by which the client must have made progress (None: no deadline now), and one
    # timer that checks it. Moving the deadline is a store, not a new timer: a keep-alive
    # request moves it three times (an asyncio timer armed and cancelled costs some 5 us).
    _deadline: float | None = None
    _timer: asyncio.TimerHandle | None = None
    _last_warning = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeout, self._max_connections = connection_limits()

    # connection -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._max_connections:
            # Not counted as a connection, never parsed: answered, and closed.
            self.transport = transport
            self._warn_refused()
            self._refuse(TOO_MANY_CONNECTIONS_RESPONSE, _REFUSED_LINGER_SECONDS)
            return
        super().connection_made(transport)
        self._arm()  # the first request's head: from the connection's start

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of what the client sends is read and dropped
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEADER_BYTES + 1024:
            self._disarm()
            self._refuse(HEADERS_TOO_LARGE_RESPONSE, _LINGER_SECONDS)

    # parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        if self._deadline is None:
            self._arm()  # a later request's head: from its first byte
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm()  # now the body's stall limit (disarmed when the message is complete)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # the deadline ---------------------------------------------------------------------------

    def _arm(self) -> None:
        self._deadline = self.loop.time() + self._timeout
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._check)

    def _disarm(self) -> None:
        self._deadline = None

    def _check(self) -> None:
        self._timer = None
        if self._deadline is None or self.transport.is_closing():
            return
        left = self._deadline - self.loop.time()
        if left > 0:
            self._timer = self.loop.call_later(left, self._check)
            return
        if not self._in_head and self.flow is not None and self.flow.read_paused:
            # Reading is paused by our own back-pressure (the app has not taken the body yet):
            # the client is not the one stalling.
            self._arm()
            return
        self.transport.close()

    def _refuse(self, response: bytes, linger: float) -> None:
        self._refused = True
        self._in_head = False
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(linger, self.transport.close)

    def _warn_refused(self) -> None:
        now = time.monotonic()
        if now - BoundedHttpToolsProtocol._last_warning >= _WARN_EVERY_SECONDS:
            BoundedHttpToolsProtocol._last_warning = now
            log.warning(
                "connection refused with 503: %d connections open (ALICE_MAX_CONNECTIONS=%d)",
                len(self.connections),
                self._max_connections,
            )


def http_protocol() -> type[BoundedHttpToolsProtocol]:
    """The HTTP protocol of `alice serve` (uvicorn's `http=`)."""
    return BoundedHttpToolsProtocol
