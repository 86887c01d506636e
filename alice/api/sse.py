"""The SSE responses: a reply's events read from its log, rendered as SPEC section 6 says."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import NamedTuple

from sse_starlette import EventSourceResponse, ServerSentEvent

from alice.models import Message
from alice.services.chat import message_response
from alice.services.container import Services

RETRY_MS = 1000
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ReplyCursor(NamedTuple):
    message_id: uuid.UUID
    seq: int


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
    mid = str(message_id)

    async def events() -> AsyncIterator[bytes]:
        first = True
        ended = False
        metrics.stream_opened(reattach)
        try:
            with suppress(TimeoutError, KeyError):
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
            if not ended and on_client_left is not None:
                on_client_left(message_id)

    return EventSourceResponse(
        events(),
        headers=_HEADERS,
        ping=services.settings.sse_ping_seconds,
        sep="\n",
        ping_message_factory=_ping,
    )


def snapshot_stream(services: Services, message: Message) -> EventSourceResponse:
    """A finished reply past its retention: one `snapshot` event with the stored message."""
    data = message_response(message).model_dump_json()

    async def events() -> AsyncIterator[bytes]:
        yield _frame(str(message.id), message.event_seq or 1, "snapshot", data, True)

    return EventSourceResponse(events(), headers=_HEADERS, ping=0, sep="\n")

