"""Replies generated server-side, independently of any connection (SPEC section 6).

Each reply is an asyncio task held in this process's registry. It writes every event to the
reply's event log (which every reader, live or re-attached, reads from) and saves its text to
the database in short transactions: a heartbeat every ALICE_GENERATION_HEARTBEAT_SECONDS and
the end state. Every way out of `streaming` is a conditional update on `status='streaming'`,
so the owner, a stop, a delete and a reaper can race and exactly one of them wins.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alice.core.config import Settings
from alice.core.database import Direct, constant, execute
from alice.core.errors import DEFAULT_DETAIL, AIServiceUnavailableError, ErrorCode
from alice.core.security import utcnow
from alice.models import Conversation, Message, MessageStatus
from alice.services import branches
from alice.services.ai.base import AIProvider, ChatTurn, TextDelta, Usage
from alice.services.chat import ReplyStart
from alice.services.eventlog.base import Entry, EventLog, LogUnavailableError
from alice.services.usage import UsageService

log = logging.getLogger("alice.generation")

_FINALIZE_ATTEMPTS = 5


class Outcome(StrEnum):
    COMPLETE = "complete"
    STOPPED = "stopped"
    DISCONNECTED = "disconnected"
    AI_FAILED = "ai_failed"
    TIME_LIMIT = "time_limit"
    SHUTDOWN = "shutdown"
    ABANDONED = "abandoned"  # finalized elsewhere (reaper): write nothing more


_ERROR_CODES = {
    Outcome.AI_FAILED: ErrorCode.AI_SERVICE_UNAVAILABLE,
    Outcome.TIME_LIMIT: ErrorCode.GENERATION_TIME_LIMIT,
    Outcome.SHUTDOWN: ErrorCode.SERVER_SHUTTING_DOWN,
}


# The statements of a reply's end and of the heartbeats, built once (a statement built per
# call costs its cache key at every call: a tenth of a reply's fixed cost on SQLite).
_STREAMING = (Message.id == bindparam("end_id"), Message.status == MessageStatus.STREAMING)
_MESSAGE = Message.__table__.c
_END = constant(
    update(Message)
    .where(*_STREAMING)
    .values(
        status=bindparam("end_status", type_=_MESSAGE.status.type),
        content=bindparam("end_content", type_=_MESSAGE.content.type),
        token_count=bindparam("end_token_count", type_=_MESSAGE.token_count.type),
        input_tokens=bindparam("end_input_tokens", type_=_MESSAGE.input_tokens.type),
        output_tokens=bindparam("end_output_tokens", type_=_MESSAGE.output_tokens.type),
        event_seq=bindparam("end_seq", type_=_MESSAGE.event_seq.type),
        heartbeat_at=None,
    )
)
_DELETE_EMPTY = (
    delete(Message).where(*_STREAMING).returning(Message.parent_id, Message.active_depth)
)
_BEATS_PER_COMMIT = 100
# Reply ends that wait together are committed together, up to this many to a transaction: an
# inline transaction holds the event loop, and 25 ends cost as little each as 100 (about half
# of an end alone, `python -m bench.reply_ends --per-commit 25|100`) while holding it ~4 ms
# rather than ~15 (every stream's next token waits that long).
_ENDS_PER_COMMIT = 25


# A reply's end waiting for its commit: (its order in a batch, its work, its result).
_End = tuple[tuple[str, str], Callable[[Connection], bool], asyncio.Future[bool]]


def _row_order(user_id: uuid.UUID, message_id: uuid.UUID) -> tuple[str, str]:
    """The order in which a batch of ends or heartbeats takes its rows: by user (the usage
    ledger's row), then by reply, the same in every process."""
    return str(user_id), str(message_id)


def _settle(done: asyncio.Future[bool], result: bool) -> None:
    if not done.done():  # its caller may have been cancelled meanwhile
        done.set_result(result)


def _all_of(works: list[Callable[[Connection], bool]]) -> Callable[[Connection], list[bool]]:
    return lambda conn: [work(conn) for work in works]


def _beat_statement(pg: bool) -> Any:
    """PostgreSQL's clock for every process on one database; SQLite processes share a host."""
    at = func.now() if pg else bindparam("beat_at", type_=_MESSAGE.heartbeat_at.type)
    return (
        update(Message)
        .where(Message.id == bindparam("beat_id"), Message.status == MessageStatus.STREAMING)
        .values(
            content=bindparam("beat_content", type_=_MESSAGE.content.type),
            event_seq=bindparam("beat_seq", type_=_MESSAGE.event_seq.type),
            input_tokens=bindparam("beat_input_tokens", type_=_MESSAGE.input_tokens.type),
            output_tokens=bindparam("beat_output_tokens", type_=_MESSAGE.output_tokens.type),
            heartbeat_at=at,
        )
    )


_POSTGRES_BEAT = _beat_statement(pg=True)
_SQLITE_BEAT = constant(_beat_statement(pg=False))


# One encoder for every event: `json.dumps` with options builds a new one per call, which
# was a third of the generation loop's own time per token.
_ENCODER = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False)


def dumps(data: dict[str, Any]) -> str:
    return _ENCODER.encode(data)


def error_data(code: ErrorCode) -> str:
    return dumps({"detail": DEFAULT_DETAIL[code], "code": code.value})


@dataclass
class Run:
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    user_id: uuid.UUID
    context: list[ChatTurn]
    model: str = ""
    # The user's running-reply slot (ALICE_USER_MAX_RUNNING_REPLIES), given back at the end.
    slot: Any = None
    seq: int = 1  # the conversation event
    parts: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int | None = None
    stop: tuple[Outcome, int | None] | None = None
    finalizing: bool = False
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ReplyMetrics(Protocol):
    """What the registry reports; `alice.core.metrics.Metrics` counts it for /metrics."""

    def reply_started(self) -> None: ...
    def reply_finished(self, status: str) -> None: ...
    def tokens(self, n: int, attended: bool) -> None: ...
    def reaped(self) -> None: ...
    def ai_error(self, cause: str) -> None: ...
    def reply_tokens(self, model: str, input_tokens: int, output_tokens: int) -> None: ...


class _NoMetrics:
    def reply_started(self) -> None: ...
    def reply_finished(self, status: str) -> None: ...
    def tokens(self, n: int, attended: bool) -> None: ...
    def reaped(self) -> None: ...
    def ai_error(self, cause: str) -> None: ...
    def reply_tokens(self, model: str, input_tokens: int, output_tokens: int) -> None: ...


class GenerationRegistry:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        direct: Direct,
        provider: AIProvider,
        event_log: EventLog,
        metrics: ReplyMetrics | None = None,
        usage: UsageService | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        # A reply's end and the heartbeats are short transactions of constant statements,
        # run where they cost least (inline on SQLite, see `Direct`).
        self._direct = direct
        self._beat_statement = _POSTGRES_BEAT if not settings.is_sqlite else _SQLITE_BEAT
        self._provider = provider
        self._log = event_log
        self._metrics: ReplyMetrics = metrics or _NoMetrics()
        # Each reply's tokens go to the user's ledger in the transaction that saves its end.
        self._usage = usage
        self._runs: dict[uuid.UUID, Run] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._pg = not settings.is_sqlite
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._readers: dict[uuid.UUID, int] = {}
        self._shutdown: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        # Reply ends waiting for their commit, and the task that commits them (`_commit_end`).
        self._ends: list[_End] = []
        self._end_writer: asyncio.Task[None] | None = None
        event_log.set_stop_handler(self._on_stop)

    # --- lifecycle ------------------------------------------------------------------------

    async def start_background(self, sweep_all: bool) -> None:
        """Repair what a crash left (all `streaming` rows when this process is alone), then
        reap stale replies every three heartbeats."""
        await self.reap(stale_only=not sweep_all)
        self._reaper = asyncio.create_task(self._reap_forever(), name="alice-reaper")

    def begin_shutdown(self, grace: float) -> asyncio.Task[None]:
        """Start the shutdown once (at SIGTERM); later calls return the same task."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._shut_down(grace), name="alice-shutdown")
        return self._shutdown

    async def shutdown(self, grace: float) -> None:
        """Let running replies go on for `grace` seconds, then end each as `incomplete`
        and tell their readers SERVER_SHUTTING_DOWN."""
        await asyncio.shield(self.begin_shutdown(grace))

    @property
    def shutting_down(self) -> bool:
        return self._shutdown is not None

    async def _shut_down(self, grace: float) -> None:
        if self._reaper:
            self._reaper.cancel()
            with suppress(asyncio.CancelledError):
                await self._reaper
        tasks = [r.task for r in self._runs.values() if r.task]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for run in list(self._runs.values()):
            self._interrupt(run, Outcome.SHUTDOWN, None)
        tasks = [r.task for r in self._runs.values() if r.task]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._ticker is not None:
            self._ticker.cancel()

    @property
    def running(self) -> int:
        return len(self._runs)

    def is_local(self, message_id: uuid.UUID) -> bool:
        return message_id in self._runs

    def reader_joined(self, message_id: uuid.UUID) -> None:
        self._readers[message_id] = self._readers.get(message_id, 0) + 1

    def reader_left(self, message_id: uuid.UUID) -> None:
        left = self._readers.get(message_id, 0) - 1
        if left > 0:
            self._readers[message_id] = left
        else:
            self._readers.pop(message_id, None)

    # --- starting and stopping -------------------------------------------------------------

    async def start(self, start: ReplyStart, user_id: uuid.UUID, slot: Any = None) -> None:
        """Run the committed reply `start` as a server-side task; its `conversation` event is
        logged first. `slot` (the user's running-reply slot) is released when the reply ends."""
        message_id, conversation_id = start.message_id, start.conversation_id
        await self._log.create(
            message_id,
            {
                "conversation_id": str(conversation_id),
                "user_id": str(user_id),
                "owner": self.owner,
            },
        )
        self._log.append(
            message_id,
            Entry(
                1,
                "conversation",
                dumps(
                    {
                        "conversation_id": str(conversation_id),
                        "is_new": start.is_new,
                        "message_id": str(message_id),
                    }
                ),
            ),
        )
        run = Run(message_id, conversation_id, user_id, start.context, model=start.model, slot=slot)
        self._runs[message_id] = run
        run.task = asyncio.create_task(self._run(run), name=f"alice-reply-{message_id}")
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._beat_forever(), name="alice-heartbeats")
        self._metrics.reply_started()

    async def request_stop(self, message_id: uuid.UUID, last_index: int | None) -> None:
        """Ask the reply's owner, in whichever process, to stop it."""
        run = self._runs.get(message_id)
        if run is not None:
            self._interrupt(run, Outcome.STOPPED, last_index)
            return
        await self._log.request_stop(message_id, last_index)

    def client_left(self, message_id: uuid.UUID) -> None:
        """The client that asked went away (ALICE_GENERATION_ON_DISCONNECT=stop)."""
        run = self._runs.get(message_id)
        if run is not None:
            self._interrupt(run, Outcome.DISCONNECTED, None)

    async def wait(self, message_id: uuid.UUID, wait_seconds: float) -> bool:
        """Wait for a local reply to end; True when it has (or is not running here)."""
        run = self._runs.get(message_id)
        if run is None:
            return True
        with suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                await run.done.wait()
        return run.done.is_set()

    def _on_stop(self, message_id: uuid.UUID, last_index: int | None) -> None:
        run = self._runs.get(message_id)
        if run is not None:
            self._interrupt(run, Outcome.STOPPED, last_index)

    def _interrupt(self, run: Run, outcome: Outcome, last_index: int | None) -> None:
        if run.finalizing or run.stop is not None or run.task is None:
            return
        run.stop = (outcome, last_index)
        run.task.cancel()

    # --- the reply --------------------------------------------------------------------------

    async def _run(self, run: Run) -> None:
        settings = self._settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.generation_max_seconds
        idle = settings.ai_timeout_seconds
        stream = self._provider.stream(settings.system_prompt, run.context, run.model or None)
        outcome = Outcome.COMPLETE
        mid = run.message_id
        append = self._log.append
        try:
            try:
                # The idle limit is pushed out only once less than `idle` is left, to 1.1 ×
                # `idle`: a reply fails between `idle` and 1.1 × `idle` after its last event
                # (never sooner), with one timer change per 0.1 × `idle` instead of one per
                # token (which was a quarter of this loop's own time).
                slack = idle * 0.1
                async with asyncio.timeout_at(min(deadline, loop.time() + idle + slack)) as timer:
                    while True:
                        when = timer.when()
                        if when is not None and when < deadline and when - loop.time() < idle:
                            timer.reschedule(min(deadline, loop.time() + idle + slack))
                        try:
                            event = await anext(stream)
                        except StopAsyncIteration:
                            break
                        if type(event) is TextDelta:
                            index = len(run.parts)
                            run.parts.append(event.text)
                            run.seq += 1
                            append(
                                mid,
                                Entry(
                                    run.seq,
                                    "token",
                                    dumps({"content": event.text, "index": index}),
                                ),
                            )
                            self._metrics.tokens(1, mid in self._readers)
                            if index == 0:
                                # The first chunk of a reply often carries several events;
                                # let its readers send the first token before the SDK parses
                                # the rest (it does not yield to the loop while data is
                                # buffered): ~1 ms off the time to first token.
                                await asyncio.sleep(0)
                        elif type(event) is Usage:
                            run.input_tokens = event.input_tokens
                            run.output_tokens = event.output_tokens
            except TimeoutError:
                if loop.time() >= deadline:
                    outcome = Outcome.TIME_LIMIT
                    log.warning("reply %s hit the time limit", mid)
                else:
                    outcome = Outcome.AI_FAILED
                    self._metrics.ai_error("idle_timeout")
                    log.warning("reply %s: no provider event for %ss", mid, idle)
            except AIServiceUnavailableError:
                outcome = Outcome.AI_FAILED
            except Exception:  # noqa: BLE001 - a bug must not leave the reply `streaming`
                log.exception("reply %s failed unexpectedly", mid)
                outcome = Outcome.AI_FAILED
            except asyncio.CancelledError:
                if run.stop is None:
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                outcome = run.stop[0]
        finally:
            run.finalizing = True
            # Closing the generator closes the HTTP request to the provider.
            with suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(_aclose(stream))
        try:
            # The provider request is closed: the reply costs nothing more. Its slot goes back
            # before the terminal event is sent, so a client that sends its next message as
            # soon as it reads `done` is not refused by a slot not yet released.
            if run.slot is not None:
                with suppress(Exception):
                    await run.slot.release()
            await asyncio.shield(self._finish(run, outcome))
        finally:
            self._runs.pop(mid, None)
            run.done.set()
            if run.slot is not None:
                await run.slot.release()  # idempotent: here for a release that failed above

    async def _finish(self, run: Run, outcome: Outcome) -> None:
        if outcome is Outcome.ABANDONED:
            self._metrics.reply_finished("abandoned")
            return
        mid = run.message_id
        parts = run.parts
        status: MessageStatus
        if outcome is Outcome.STOPPED:
            last_index = run.stop[1] if run.stop else None
            if last_index is not None:
                parts = parts[: max(last_index, -1) + 1]
            status = MessageStatus.STOPPED
        elif outcome is Outcome.COMPLETE:
            status = MessageStatus.COMPLETE
        else:
            status = MessageStatus.INCOMPLETE
        text = "".join(parts)
        terminal_seq = run.seq + 1
        if status is MessageStatus.COMPLETE:
            token_count = run.output_tokens if run.output_tokens is not None else len(parts)
        else:
            token_count = len(parts)
        delete_row = status is MessageStatus.INCOMPLETE and not text
        # What the provider reported; a reply that ended early had at least one output token
        # per text delta received, whatever the provider had counted by then.
        input_tokens = run.input_tokens
        output_tokens = run.output_tokens or 0
        if status is not MessageStatus.COMPLETE or run.output_tokens is None:
            output_tokens = max(output_tokens, len(run.parts))
        ledger = None
        if self._usage is not None:
            ledger = self._usage.record_statement(
                run.user_id, input_tokens, output_tokens, 0 if delete_row else 1
            )
        won = await self._finalize_row(
            mid,
            run.user_id,
            status,
            text,
            token_count,
            terminal_seq,
            delete_row,
            tokens=(input_tokens, output_tokens),
            ledger=ledger,
        )
        if won is None:
            entry = Entry(terminal_seq, "error", error_data(ErrorCode.DATABASE_UNAVAILABLE))
            await self._log.finish(mid, entry)
            self._metrics.reply_finished("database_unavailable")
            return
        if not won:
            # Someone else (the reaper, a delete) ended it first and told the readers.
            self._metrics.reply_finished("abandoned")
            return
        self._metrics.reply_tokens(
            run.model or self._settings.ai_model, input_tokens, output_tokens
        )
        if outcome in _ERROR_CODES:
            entry = Entry(terminal_seq, "error", error_data(_ERROR_CODES[outcome]))
        else:
            total = run.input_tokens + token_count
            entry = Entry(
                terminal_seq,
                "done",
                dumps(
                    {
                        "message_id": str(mid),
                        "conversation_id": str(run.conversation_id),
                        "total_tokens": total,
                        "status": status.value,
                        "last_index": len(parts) - 1,
                    }
                ),
            )
        await self._log.finish(mid, entry)
        self._metrics.reply_finished("deleted" if delete_row else status.value)

    async def _finalize_row(
        self,
        mid: uuid.UUID,
        user_id: uuid.UUID,
        status: MessageStatus,
        text: str,
        token_count: int,
        terminal_seq: int,
        delete_row: bool,
        tokens: tuple[int, int] = (0, 0),
        ledger: Any = None,
    ) -> bool | None:
        """The end state, committed. True: this call ended it; False: it had ended already;
        None: the database could not be reached. `ledger` (the user's usage) is added in the
        same transaction, only by the call that ends the reply."""
        params = {
            "end_id": mid,
            "end_status": status,
            "end_content": text,
            "end_token_count": token_count,
            "end_input_tokens": tokens[0],
            "end_output_tokens": tokens[1],
            "end_seq": terminal_seq,
        }

        def work(conn: Connection) -> bool:
            if delete_row:
                gone = conn.execute(_DELETE_EMPTY, params).first()
                won = gone is not None
                if gone is not None:
                    # A failed regenerate: the branch goes on through an older reply.
                    branches.after_empty_reply_deleted(
                        conn, gone.parent_id, gone.active_depth is not None
                    )
            else:
                won = execute(conn, _END, params).rowcount > 0
            if won and ledger is not None:
                execute(conn, *ledger)
            return won

        for attempt in range(_FINALIZE_ATTEMPTS):
            try:
                return await self._commit_end(work, _row_order(user_id, mid))
            except Exception:  # noqa: BLE001 - retried, then reported to the readers
                log.warning("saving reply %s failed (attempt %d)", mid, attempt + 1, exc_info=True)
                await asyncio.sleep(0.2 * 2**attempt)
        return None

    async def _commit_end(
        self, work: Callable[[Connection], bool], order: tuple[str, str] = ("", "")
    ) -> bool:
        """`work` (a reply's end) committed, with the other ends waiting at the same time.

        Replies that started together end together, and on SQLite an end in a transaction of
        its own costs 264-279 µs (its search-index segment and the commit), against 145-152 µs
        at ten to a transaction (`python -m bench.reply_ends`). One task writes: the ends that
        arrived by the time it runs, then those that came meanwhile, each batch in one
        transaction; a batch that fails is tried end by end, so that one end cannot sink the
        others, and a failed end's caller retries it.

        `order` (the user's id, the reply's): a batch runs in this order, so that two processes'
        batches take the rows of one user's usage ledger in the same order on PostgreSQL (no
        deadlock between them)."""
        done = asyncio.get_running_loop().create_future()
        self._ends.append((order, work, done))
        if self._end_writer is None:
            self._end_writer = asyncio.create_task(self._write_ends(), name="alice-reply-ends")
        return await done

    async def _write_ends(self) -> None:
        batch: list[_End] = []
        try:
            while self._ends:
                batch = sorted(self._ends[:_ENDS_PER_COMMIT], key=lambda end: end[0])
                del self._ends[:_ENDS_PER_COMMIT]
                if len(batch) > 1:
                    try:
                        won = await self._direct.transaction(_all_of([w for _, w, _ in batch]))
                    except Exception:  # noqa: BLE001 - then each end alone: one cannot sink all
                        won = None
                    if won is not None:
                        for (_, _, done), result in zip(batch, won, strict=True):
                            _settle(done, result)
                        batch = []
                for _, work, done in batch:
                    try:
                        _settle(done, await self._direct.transaction(work))
                    except Exception as exc:  # noqa: BLE001 - its caller retries it
                        if not done.done():
                            done.set_exception(exc)
                batch = []
                # An inline transaction does not yield: let the streams go on between two.
                await asyncio.sleep(0)
        except BaseException:
            for _, _, done in batch + self._ends:  # cancelled: no caller waits for ever
                done.cancel()
            self._ends.clear()
            raise
        finally:
            self._end_writer = None

    async def _beat_forever(self) -> None:
        """One ticker for every reply of the process (not a task per reply): every
        heartbeat interval, each running reply's text so far is saved, `_BEATS_PER_COMMIT`
        replies to a transaction."""
        every = self._settings.generation_heartbeat_seconds
        while self._runs:
            await asyncio.sleep(every)
            # In the order the ends' batches take their rows (`_commit_end`): no deadlock
            # between a beat and an end on PostgreSQL.
            runs = sorted(
                (run for run in self._runs.values() if not run.finalizing),
                key=lambda run: _row_order(run.user_id, run.message_id),
            )
            for i in range(0, len(runs), _BEATS_PER_COMMIT):
                await self._beat(runs[i : i + _BEATS_PER_COMMIT])
                # An inline transaction does not yield: let the streams go on between two.
                await asyncio.sleep(0)
        self._ticker = None

    async def _beat(self, runs: list[Run]) -> None:
        """Save the text so far of each of `runs`, in one transaction; a reply whose row is no
        longer `streaming` was ended elsewhere (the reaper, a delete): it is abandoned."""
        # PostgreSQL's statement reads the database's clock; SQLite's takes this host's.
        clock = {} if self._pg else {"beat_at": utcnow()}
        # Text and position are taken together: the saved content covers exactly `seq`.
        # The tokens so far too: what the reaper charges if this process dies.
        params = [
            {
                "beat_id": run.message_id,
                "beat_content": "".join(run.parts),
                "beat_seq": run.seq,
                "beat_input_tokens": run.input_tokens,
                "beat_output_tokens": max(run.output_tokens or 0, len(run.parts)),
                **clock,
            }
            for run in runs
        ]
        statement = self._beat_statement

        def work(conn: Connection) -> list[int]:
            return [execute(conn, statement, p).rowcount for p in params]

        try:
            saved = await self._direct.transaction(work)
        except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
            log.warning("heartbeat of %d replies failed", len(runs), exc_info=True)
            return
        for run, count in zip(runs, saved, strict=True):
            if count == 0 and not run.finalizing:
                log.warning("reply %s was ended elsewhere; abandoning it", run.message_id)
                if run.stop is None and run.task is not None:
                    run.stop = (Outcome.ABANDONED, None)
                    run.task.cancel()

    # --- the reaper ---------------------------------------------------------------------------

    async def _reap_forever(self) -> None:
        every = 3 * self._settings.generation_heartbeat_seconds
        while True:
            await asyncio.sleep(every)
            try:
                await self.reap(stale_only=True)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.warning("reaper round failed", exc_info=True)

    async def reap(self, stale_only: bool) -> int:
        """End the replies whose process died: `incomplete` (deleted when empty), and their
        readers told GENERATION_LOST. Returns how many this call ended."""
        cutoff: Any
        stale = timedelta(seconds=6 * self._settings.generation_heartbeat_seconds)
        query = (
            select(Message, Conversation.user_id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.status == MessageStatus.STREAMING)
        )
        if stale_only:
            cutoff = (func.now() - stale) if self._pg else (utcnow() - stale)
            query = query.where(Message.heartbeat_at < cutoff)
        async with self._sessions() as session:
            rows = list((await session.execute(query)).tuples())
        reaped = 0
        for row, user_id in rows:
            if row.id in self._runs:
                continue
            if await self._reap_one(row, user_id):
                reaped += 1
        return reaped

    async def _reap_one(self, row: Message, user_id: uuid.UUID) -> bool:
        try:
            state = await self._log.state(row.id)
        except LogUnavailableError:
            state = None
        last_seq = max(row.event_seq or 1, state.last_seq if state else 0)
        if state is not None and state.finished:
            return False
        terminal_seq = last_seq + 1
        # The tokens its last heartbeat saved: the most this process can know of them.
        ledger = None
        if self._usage is not None:
            ledger = self._usage.record_statement(
                user_id, row.input_tokens, row.output_tokens, 1 if row.content else 0
            )
        won = await self._finalize_row(
            row.id,
            user_id,
            MessageStatus.INCOMPLETE,
            row.content,
            max((row.event_seq or 1) - 1, 0),
            terminal_seq,
            delete_row=not row.content,
            tokens=(row.input_tokens, row.output_tokens),
            ledger=ledger,
        )
        if not won:
            return False
        log.warning("reaped reply %s (its process stopped)", row.id)
        self._metrics.reaped()
        self._metrics.reply_tokens(
            row.model or self._settings.ai_model, row.input_tokens, row.output_tokens
        )
        with suppress(Exception):
            await self._log.mark_lost(
                row.id, Entry(terminal_seq, "error", error_data(ErrorCode.GENERATION_LOST))
            )
        return True


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
