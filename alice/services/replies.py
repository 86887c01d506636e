"""ReplyService: the life of a reply, as the chat routes see it (SPEC section 6).

`POST /chat/message` reads, top to bottom:

1. `ReplyService.send` commits the user's message and the reply's `streaming` placeholder
   (`ChatService.begin_reply`, which also reads the context the model gets) and hands that
   start to `GenerationRegistry.start`, which runs the reply as a task of this process: the
   provider's deltas become events of the reply's event log (`services/eventlog`).
2. It answers with a `ReplyFeed`: the reply's SSE frames read from that log from a cursor
   (`open_feed`), which `api/sse.py` sends. Every reader, the POST's own, a re-attach here or
   in another process, reads the log the same way.
3. `stop` asks the reply's owner, in whichever process, to end it and waits for the end: on
   the run's own end event when the reply runs here, on the log's terminal event otherwise.

The router turns the answer (a feed, a message or nothing) into a response and does no more.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, NamedTuple

from alice.core.config import Settings
from alice.core.errors import StreamUnavailableError, ValidationFailedError
from alice.core.metrics import Metrics
from alice.models import IdempotencyKey, Message, MessageStatus
from alice.services.budgets import Budgets
from alice.services.chat import (
    KEY_SYNTAX,
    ChatService,
    IdempotencyClaim,
    KeyTakenError,
    ReplyStart,
    message_response,
)
from alice.services.eventlog.base import EventLog, FrameReader, LogUnavailableError
from alice.services.generation import GenerationRegistry
from alice.services.slots import UNCOUNTED

RETRY_MS = 1000
_RETRY = b"retry: %d\n" % RETRY_MS
STOP_WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.1
# A key's reply found running with no log yet (see `_log_started`): wait this long for it.
_LOG_START_WAIT_SECONDS = 2.0
_LOG_START_POLL_SECONDS = 0.02


class ReplyCursor(NamedTuple):
    """A stream position, `<message_id>:<seq>`: the last event a client has."""

    message_id: uuid.UUID
    seq: int


def parse_cursor(value: str, field: str) -> ReplyCursor:
    """A `Last-Event-ID` or `after` value; a 422 on `field` when it does not decode."""
    message_id, sep, seq = value.partition(":")
    try:
        if not sep or not seq.isdigit() or len(seq) > 9:
            raise ValueError
        return ReplyCursor(uuid.UUID(message_id), int(seq))
    except ValueError:
        raise ValidationFailedError(field, "The event id is not valid.") from None


def frame(message_id: str, seq: int, event: str, data: str) -> bytes:
    """One SSE event as sent, `id: <message_id>:<seq>` (a stream's first gets `retry` before)."""
    return f"id: {message_id}:{seq}\nevent: {event}\ndata: {data}\n\n".encode()


class _OneFrame:
    """A frame reader of a single, final frame (a snapshot)."""

    __slots__ = ("_frame", "ended")

    def __init__(self, frame: bytes) -> None:
        self._frame = frame
        self.ended = False

    def take(self) -> tuple[bytes, int]:
        frame, self._frame = self._frame, b""
        self.ended = True
        return frame, 0

    def changed(self) -> asyncio.Future[None]:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def aclose(self) -> None:
        return None


class ReplyFeed:
    """A reply's SSE frames from a cursor, for `api/sse.py` to send: `take` every frame
    waiting (one bytes, b"" when none; None once the feed is over: after the terminal event,
    or when the log is gone or unreachable, and the client re-attaches), `changed` to wait
    for more.

    `ping_seconds`: keep-alive comment interval (0: none). `deadline` (loop time): a
    re-attach is closed without a terminal event then. `closing`: set at server shutdown,
    when the feed closes at once if the reply is generated elsewhere (its client re-attaches
    to another process), or after `shutdown_grace` if it is generated here (it ends with
    SERVER_SHUTTING_DOWN within that)."""

    __slots__ = (
        "_reader",
        "_on_close",
        "_first",
        "_over",
        "_ended",
        "_count",
        "ping_seconds",
        "shutdown_grace",
        "deadline",
        "closing",
    )

    def __init__(
        self,
        reader: FrameReader,
        *,
        ping_seconds: float,
        shutdown_grace: float = 0,
        deadline: float | None = None,
        closing: asyncio.Future[None] | None = None,
        count_tokens: Callable[[int], None] | None = None,
        on_close: Callable[[bool], None] | None = None,
    ) -> None:
        self._reader = reader
        self._count = count_tokens
        self._on_close = on_close
        self._first = True
        self._over = False
        self._ended = False
        self.ping_seconds = ping_seconds
        self.shutdown_grace = shutdown_grace
        self.deadline = deadline
        self.closing = closing

    def take(self) -> bytes | None:
        if self._over:
            return None
        try:
            chunk, tokens = self._reader.take()
        except (KeyError, LogUnavailableError):
            chunk, tokens = b"", 0
            self._over = True
        if self._reader.ended:
            self._ended = True
            self._over = True
        if not chunk:
            return None if self._over else b""
        if self._first:
            self._first = False
            chunk = _RETRY + chunk
        if tokens and self._count is not None:
            self._count(tokens)
        return chunk

    def changed(self) -> asyncio.Future[Any]:
        return self._reader.changed()

    async def close(self) -> None:
        """Release the reader; `on_close(ended)` runs once."""
        on_close, self._on_close = self._on_close, None
        self._over = True
        await self._reader.aclose()
        if on_close is not None:
            on_close(self._ended)


@dataclass(frozen=True, slots=True)
class PriorSend:
    """What a send refers to that was sent before (see `ReplyService.prior_send`)."""

    reply: Message | None = None
    key_row: IdempotencyKey | None = None

    @property
    def is_reattach(self) -> bool:
        return self.reply is not None or self.key_row is not None


class ReplyService:
    def __init__(
        self,
        settings: Settings,
        chat: ChatService,
        generations: GenerationRegistry,
        event_log: EventLog,
        metrics: Metrics,
        budgets: Budgets | None = None,
    ) -> None:
        self._settings = settings
        self._chat = chat
        self._generations = generations
        self._log = event_log
        self._metrics = metrics
        # The per-user budgets (SPEC 15), checked before anything is stored or streamed.
        self._budgets = budgets
        self._closing: asyncio.Future[None] | None = None

    # --- starting and re-attaching ------------------------------------------------------------

    async def prior_send(
        self, user_id: uuid.UUID, last_event_id: str | None, key: str | None
    ) -> PriorSend:
        """What a send refers to that was sent before: the user's reply its `Last-Event-ID`
        names, else the user's send its `Idempotency-Key` names. Either makes the request a
        re-attach (a cursor or key that does not parse names nothing here; `send` refuses
        it). Asked before the request is counted, to count it in the right limit."""
        if last_event_id:
            try:
                cursor = parse_cursor(last_event_id, "header.Last-Event-ID")
            except ValidationFailedError:
                cursor = None
            if cursor is not None:
                reply = await self._chat.find_reply(user_id, cursor.message_id)
                if reply is not None:
                    return PriorSend(reply=reply)
        if key and KEY_SYNTAX.fullmatch(key):
            row = await self._chat.find_idempotency_key(user_id, key)
            if row is not None:
                return PriorSend(key_row=row)
        return PriorSend()

    async def send(
        self,
        user_id: uuid.UUID,
        content: str,
        conversation_id: uuid.UUID | None,
        last_event_id: str | None = None,
        model: str | None = None,
        *,
        prior: PriorSend | None = None,
        idempotency: IdempotencyClaim | None = None,
        edit_of: uuid.UUID | None = None,
    ) -> ReplyFeed | None:
        """Send a message and feed its reply from the start. With a `Last-Event-ID` naming one
        of the user's replies, or an `Idempotency-Key` the user sent this body with in the
        last 24 hours (even at this very moment, in another process), it is a re-attach
        instead: nothing is sent or stored (None: 204, nothing follows). `prior` is what
        `prior_send` found for this request, when the caller asked it already. `model`: one of
        ALICE_AI_MODELS, else the conversation's (422 for any other); the user's budgets
        refuse (429) before anything is stored. With `edit_of` the message is a new version
        of that user message (SPEC section 14)."""
        if prior is None:
            key = idempotency.key if idempotency else None
            prior = await self.prior_send(user_id, last_event_id, key)
        if last_event_id:
            field = "header.Last-Event-ID"
            cursor = parse_cursor(last_event_id, field)
            if prior.reply is not None:
                return await self._reattach(cursor, prior.reply, field)
        if idempotency is not None and prior.key_row is not None:
            return await self._key_reattach(prior.key_row, idempotency)
        self._chat.check_model(model)
        return await self._run(
            user_id,
            lambda: self._chat.begin_reply(
                user_id,
                content,
                conversation_id,
                model,
                idempotency=idempotency,
                edit_of=edit_of,
            ),
            idempotency,
        )

    async def regenerate(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, message_id: uuid.UUID
    ) -> ReplyFeed | None:
        """A new version of the assistant message `message_id`, from its context, run and fed
        from the start as any reply, and counted in the budgets as one (SPEC section 14)."""
        return await self._run(
            user_id, lambda: self._chat.begin_regenerate(user_id, conversation_id, message_id)
        )

    async def _run(
        self,
        user_id: uuid.UUID,
        begin: Callable[[], Awaitable[ReplyStart]],
        idempotency: IdempotencyClaim | None = None,
    ) -> ReplyFeed | None:
        """Admit a reply under the user's budgets, commit it (`begin`), run it here and feed it
        from its start."""
        slot = await self._budgets.admit(user_id) if self._budgets else UNCOUNTED
        try:
            start = await begin()
            await self._generations.start(start, user_id, slot=slot)
        except KeyTakenError as taken:  # the same key at the same moment: the other one sends
            await slot.release()
            assert idempotency is not None
            return await self._key_reattach(taken.row, idempotency)
        except BaseException:
            # The reply did not start (a 404, a 409, a failure): its slot is not held.
            await slot.release()
            raise
        # The reply's task runs first, up to its request to the provider on the wire; this
        # response (its head, the `conversation` event) goes out meanwhile. Here, after the
        # slot's guard: the reply has started and holds its slot whatever happens to this call.
        await asyncio.sleep(0)
        on_client_left = None
        if self._settings.generation_on_disconnect == "stop":
            on_client_left = self._generations.client_left
        return self.open_feed(start.message_id, 0, on_client_left=on_client_left)

    async def _key_reattach(self, row: IdempotencyKey, claim: IdempotencyClaim) -> ReplyFeed | None:
        """A send whose key was sent before: with the same body, a re-attach to that reply
        from its start; with another body, a 422."""
        field = "header.Idempotency-Key"
        if row.request_hash != claim.request_hash:
            raise ValidationFailedError(field, "This key was sent with another request body.")
        reply = await self._chat.get_message(row.message_id)
        if reply is None:
            return None  # deleted: it failed before any text, or its conversation went
        if reply.status == MessageStatus.STREAMING:
            await self._log_started(reply.id)
        return await self._reattach(ReplyCursor(reply.id, 0), reply, field)

    async def _log_started(self, message_id: uuid.UUID) -> None:
        """Wait, briefly, for a reply's log to exist. The send that stored a key creates its
        reply's log right after its commit; a simultaneous send of the same key (maybe in
        another process) learns of that commit first, and would otherwise find the reply
        running with no log: a 503. Only this race waits here."""
        loop = asyncio.get_running_loop()
        until = loop.time() + _LOG_START_WAIT_SECONDS
        while loop.time() < until:
            try:
                if await self._log.state(message_id) is not None:
                    return
            except LogUnavailableError:
                return
            await asyncio.sleep(_LOG_START_POLL_SECONDS)

    async def reattach(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        last_event_id: str | None,
        after: str | None,
    ) -> ReplyFeed | None:
        """Feed the conversation's newest reply, or the one the cursor names, after the cursor
        (None: 204, nothing follows or there is no reply)."""
        field = "header.Last-Event-ID" if last_event_id else "query.after"
        value = last_event_id or after
        if not value:
            newest = await self._chat.newest_reply(user_id, conversation_id)
            if newest is None:
                return None
            return await self._reattach(ReplyCursor(newest.id, 0), newest, field)
        cursor = parse_cursor(value, field)
        await self._chat.get_conversation(user_id, conversation_id)
        reply = await self._chat.get_message(cursor.message_id)
        if reply is not None and reply.conversation_id != conversation_id:
            raise ValidationFailedError(field, "The event id is not this conversation's.")
        return await self._reattach(cursor, reply, field)

    async def _reattach(
        self, cursor: ReplyCursor, reply: Message | None, field: str
    ) -> ReplyFeed | None:
        """A re-attach once the reply is known to be the caller's (or known to be none)."""
        if reply is None:
            # The cursor names no stored reply: a reply deleted for having no text counts as
            # none; an id that is nowhere at all is a bad cursor.
            try:
                known = await self._log.state(cursor.message_id) is not None
            except LogUnavailableError:
                known = False
            if known:
                return None
            raise ValidationFailedError(field, "The event id names no reply.")
        if reply.role != "assistant":
            raise ValidationFailedError(field, "The event id names no reply.")
        try:
            state = await self._log.state(cursor.message_id)
        except LogUnavailableError:
            state = None
        if state is None:
            if reply.status == MessageStatus.STREAMING:
                raise StreamUnavailableError()
            if reply.event_seq is not None and cursor.seq >= reply.event_seq:
                return None
            return self._snapshot(reply)
        if state.finished and cursor.seq >= state.last_seq:
            return None
        return self.open_feed(
            cursor.message_id,
            cursor.seq,
            max_seconds=self._settings.sse_max_connection_seconds,
            reattach=True,
        )

    def open_feed(
        self,
        message_id: uuid.UUID,
        after: int,
        *,
        max_seconds: float | None = None,
        on_client_left: Callable[[uuid.UUID], None] | None = None,
        reattach: bool = False,
    ) -> ReplyFeed:
        """Every event of the reply after `after`, live, to its terminal event. Closed without
        a terminal event after `max_seconds`, or when the log is gone or unreachable (the
        client re-attaches, elsewhere if need be). `on_client_left` runs when the reader goes
        before the terminal event."""
        metrics = self._metrics
        generations = self._generations
        metrics.stream_opened(reattach)
        generations.reader_joined(message_id)

        def on_close(ended: bool) -> None:
            metrics.stream_closed()
            generations.reader_left(message_id)
            if not ended and on_client_left is not None:
                on_client_left(message_id)

        loop = asyncio.get_running_loop()
        return ReplyFeed(
            self._log.frames(message_id, after),
            ping_seconds=self._settings.sse_ping_seconds,
            shutdown_grace=(
                self._settings.shutdown_grace_seconds + 5 if generations.is_local(message_id) else 0
            ),
            deadline=None if max_seconds is None else loop.time() + max_seconds,
            closing=self._closing_future(),
            count_tokens=metrics.tokens_sent,
            on_close=on_close,
        )

    def server_closing(self) -> None:
        """The server is shutting down (SIGTERM): feeds of replies generated elsewhere close
        now, those of replies generated here once the reply ends (within its grace)."""
        closing = self._closing_future()
        if not closing.done():
            closing.set_result(None)

    def _closing_future(self) -> asyncio.Future[None]:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_future()
        return self._closing

    def _snapshot(self, message: Message) -> ReplyFeed:
        """A finished reply past its retention: one `snapshot` event with the stored message."""
        data = message_response(message).model_dump_json()
        seq = message.event_seq or 1
        return ReplyFeed(_OneFrame(frame(str(message.id), seq, "snapshot", data)), ping_seconds=0)

    # --- stopping -------------------------------------------------------------------------------

    async def stop(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, last_index: int | None
    ) -> Message | None:
        """Stop the conversation's running reply, from any process, and wait up to 5 s for its
        end. The message as it then is (still `streaming`: the stop is under way), or None when
        nothing was running."""
        reply = await self._chat.streaming_message(user_id, conversation_id)
        if reply is None:
            return None
        await self._generations.request_stop(reply.id, last_index)
        return await self.wait_for_end(reply.id, STOP_WAIT_SECONDS)

    async def delete_conversation(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        """Delete a conversation and its messages; a running reply is stopped first."""
        reply = await self._chat.streaming_message(user_id, conversation_id)
        if reply is not None:
            await self._generations.request_stop(reply.id, None)
            await self.wait_for_end(reply.id, STOP_WAIT_SECONDS)
        await self._chat.delete(user_id, conversation_id)

    async def wait_for_end(self, message_id: uuid.UUID, wait_seconds: float) -> Message | None:
        """Wait up to `wait_seconds` for the reply to leave `streaming`; the stored message
        then (None: deleted). A reply generated here is waited for on its run's end; one
        generated elsewhere on its log's terminal event (the row is committed before it)."""
        if self._generations.is_local(message_id):
            await self._generations.wait(message_id, wait_seconds)
            return await self._chat.get_message(message_id)
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_seconds
        with suppress(TimeoutError):
            async with asyncio.timeout_at(until):
                if await self._terminal_logged(message_id):
                    return await self._chat.get_message(message_id)
        # The log is unknown here or unreachable (a reply left by a crash, Redis down): the
        # database is the only witness left.
        while True:
            message = await self._chat.get_message(message_id)
            if message is None or message.status != MessageStatus.STREAMING:
                return message
            if loop.time() >= until:
                return message
            await asyncio.sleep(min(_POLL_SECONDS, max(until - loop.time(), 0)))

    async def _terminal_logged(self, message_id: uuid.UUID) -> bool:
        """Wait for the log's terminal event; False when the log cannot be followed."""
        try:
            state = await self._log.state(message_id)
        except LogUnavailableError:
            return False
        if state is None:
            return False
        if state.finished:
            return True
        follower = self._log.follow(message_id, state.last_seq)
        try:
            async for entry in follower:
                if entry.terminal:
                    return True
        except (KeyError, LogUnavailableError):
            return False
        finally:
            await follower.aclose()
        return False
