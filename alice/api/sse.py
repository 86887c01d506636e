"""The SSE response that sends a reply's feed (`services/replies.py`) as SPEC section 6 says."""

from __future__ import annotations

from contextlib import suppress

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from alice.services.replies import ReplyFeed

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _EventStream(EventSourceResponse):
    """An EventSourceResponse that always ends its body. At server shutdown sse-starlette
    cancels its tasks and returns without the last (empty) body message: the client saw a cut
    chunked body and uvicorn logged an error for every open stream. Ending it here closes the
    stream cleanly, without a terminal event, so that the client re-attaches elsewhere."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ended = False

        async def tracking_send(message: ASGIMessage) -> None:
            nonlocal ended
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        await super().__call__(scope, receive, tracking_send)
        if not ended:
            with suppress(Exception):  # the client may be gone already
                await send({"type": "http.response.body", "body": b"", "more_body": False})


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", sep="\n")


def feed_response(feed: ReplyFeed) -> EventSourceResponse:
    """The `text/event-stream` response that sends a reply's feed, with keep-alive pings."""
    return _EventStream(
        feed.frames,
        headers=_HEADERS,
        ping=feed.ping_seconds,
        sep="\n",
        ping_message_factory=_ping if feed.ping_seconds else None,
        shutdown_grace_period=feed.shutdown_grace,
    )
