"""The SSE responses: a reply's events read from its log, rendered as SPEC section 6 says."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import NamedTuple

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from alice.models import Message
from alice.services.chat import message_response
from alice.services.container import Services
from alice.services.eventlog.base import LogUnavailableError

RETRY_MS = 1000
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ReplyCursor(NamedTuple):
    message_id: uuid.UUID
    seq: int


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


def _frame(message_id: str, seq: int, event: str, data: str, first: bool) -> bytes:
    retry = f"retry: {RETRY_MS}\n" if first else ""
    return f"{retry}id: {message_id}:{seq}\nevent: {event}\ndata: {data}\n\n".encode()


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", sep="\n")


def reply_stream(
    services: Services,
    message_id: uuid.UUID,
    *,
    after: int,
    max_seconds: float | None = None,
    on_client_left: Callable[[uuid.UUID], None] | None = None,
    reattach: bool = False,
) -> EventSourceResponse:
    """Every event of the reply after `after`, live, to its terminal event. A re-attach is
    closed without a terminal event after `max_seconds` (the client re-attaches)."""
    log = services.event_log
    metrics = services.metrics
    generations = services.generations
    mid = str(message_id)
    # At shutdown a stream of a reply this process generates stays open until the reply ends
    # (SERVER_SHUTTING_DOWN at the latest); one of a reply generated elsewhere closes at once,
    # without a terminal event, and its client re-attaches to another process.
    local = generations.is_local(message_id)
    grace = services.settings.shutdown_grace_seconds + 5 if local else 0

    async def events() -> AsyncIterator[bytes]:
        first = True
        ended = False
        metrics.stream_opened(reattach)
        generations.reader_joined(message_id)
        try:
            # Past the cap, or the log gone or unreachable: close without a terminal event,
            # and the client re-attaches (to another process, if need be).
            with suppress(TimeoutError, KeyError, LogUnavailableError):
                async with asyncio.timeout(max_seconds):
                    async for entry in log.follow(message_id, after):
                        yield _frame(mid, entry.seq, entry.event, entry.data, first)
                        first = False
                        if entry.event == "token":
                            metrics.token_streamed()
                        if entry.terminal:
                            ended = True
        finally:
            metrics.stream_closed()
            generations.reader_left(message_id)
            if not ended and on_client_left is not None:
                on_client_left(message_id)

    return _EventStream(
        events(),
        headers=_HEADERS,
        ping=services.settings.sse_ping_seconds,
        sep="\n",
        ping_message_factory=_ping,
        shutdown_grace_period=grace,
    )


def snapshot_stream(services: Services, message: Message) -> EventSourceResponse:
    """A finished reply past its retention: one `snapshot` event with the stored message."""
    data = message_response(message).model_dump_json()

    async def events() -> AsyncIterator[bytes]:
        yield _frame(str(message.id), message.event_seq or 1, "snapshot", data, True)

    return _EventStream(events(), headers=_HEADERS, ping=0, sep="\n")
