"""The `text/event-stream` response that sends a reply's feed (`services/replies.py`), as
SPEC section 6 says: a plain ASGI response.

Per stream it holds one task (the wait for the client's disconnect) and waits on futures
shared by every reader of the reply; the keep-alive ping is the timeout of that wait, not a
task of its own, and each write is one `send` of every frame waiting (no cancel scope per
send). sse-starlette ran four tasks and a cancel scope per send for each stream: see
README "Performance devices" for the figures.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from alice.services.replies import ReplyFeed

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_PING = b": ping\n\n"
_END: dict[str, Any] = {"type": "http.response.body", "body": b"", "more_body": False}


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class FeedResponse(Response):
    """Sends a :class:`ReplyFeed`: its frames as they come, a `: ping` comment after every
    `ping_seconds` of silence. It ends after the terminal event, when the client leaves, when
    the feed's time is up, and at server shutdown (at once for a reply generated elsewhere;
    for one generated here, when it ends, within its grace), always with a well-formed end of
    the body, so a client without the terminal event re-attaches."""

    media_type = "text/event-stream"

    def __init__(self, feed: ReplyFeed) -> None:
        # Not Response.__init__: a body of unknown length has no Content-Length.
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)
        self._feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        feed = self._feed
        if scope.get("method") == "HEAD":
            await send(start)
            await send(_END)
            await feed.close()
            return
        loop = asyncio.get_running_loop()
        disconnected = loop.create_task(_until_disconnect(receive))
        ping = feed.ping_seconds
        deadline = feed.deadline
        closing = feed.closing
        # Each wait is one future of the stream's own, `woken`: set by the feed's next change,
        # the client leaving, the server closing, or the stream's one timer (the next ping or
        # the deadline, re-armed only when that time moves). Cheaper per token than
        # `asyncio.wait` (a waiter, a set, a timer and two callbacks added and removed at
        # every wake-up), and `closing`, shared by every stream, gets one callback per stream
        # for its whole life rather than one at every wake-up (a scan of all of them).
        woken = loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        timer: asyncio.TimerHandle | None = None
        timer_at: float | None = None

        def ring() -> None:
            nonlocal timer_at
            timer_at = None  # re-armed at the next wait
            wake()

        disconnected.add_done_callback(wake)
        if closing is not None:
            closing.add_done_callback(wake)
        try:
            await send(start)
            next_ping = loop.time() + ping if ping > 0 else None
            while True:
                chunk = feed.take()
                if chunk is None:
                    break
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if disconnected.done():
                        break
                    continue
                if disconnected.done():
                    break
                now = loop.time()
                if closing is not None and closing.done():
                    # Shutting down: a reply generated elsewhere closes now (its client
                    # re-attaches to another process); one generated here has its grace.
                    closing = None
                    end = now + feed.shutdown_grace
                    deadline = end if deadline is None else min(deadline, end)
                if deadline is not None and now >= deadline:
                    break
                if next_ping is not None and now >= next_ping:
                    await send({"type": "http.response.body", "body": _PING, "more_body": True})
                    next_ping = loop.time() + ping
                    continue
                # The stream's next time of its own: the next ping or the deadline, the sooner.
                at = min((t for t in (next_ping, deadline) if t is not None), default=None)
                if at != timer_at:
                    if timer is not None:
                        timer.cancel()
                    timer, timer_at = (None, None) if at is None else (loop.call_at(at, ring), at)
                changed = feed.changed()
                if changed.done():
                    continue
                woken = loop.create_future()
                changed.add_done_callback(wake)
                try:
                    await woken
                finally:
                    changed.remove_done_callback(wake)
            if not disconnected.done():
                await send(_END)
        finally:
            if timer is not None:
                timer.cancel()
            if feed.closing is not None:
                feed.closing.remove_done_callback(wake)
            disconnected.cancel()
            await feed.close()
