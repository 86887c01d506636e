"""In-process event log: the embedded default, and the building block of the Redis log (the
owner's write-through copy and the local mirrors of remote generations)."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from array import array
from collections.abc import Callable, Iterable

from alice.services.eventlog.base import (
    TERMINAL_EVENTS,
    Entry,
    EventLog,
    Follower,
    FrameReader,
    LogState,
    StopHandler,
)

logger = logging.getLogger(__name__)


# Event names, shared by every log: a log keeps one byte per entry for its name.
_EVENT_NAMES: list[str] = []
_EVENT_IDS: dict[str, int] = {}


def _event_id(name: str) -> int:
    event_id = _EVENT_IDS.get(name)
    if event_id is None:
        if len(_EVENT_NAMES) >= 256:
            raise ValueError("too many distinct event names")
        event_id = len(_EVENT_NAMES)
        _EVENT_NAMES.append(sys.intern(name))
        _EVENT_IDS[_EVENT_NAMES[event_id]] = event_id
    return event_id


_TOKEN = _event_id("token")
_TERMINAL = frozenset(_event_id(name) for name in sorted(TERMINAL_EVENTS))


class GenLog:
    """One reply's events, each kept as the SSE frame it is sent as (`id`, `event`, `data`),
    encoded once, when it enters the log: every reader is handed the same bytes, and a reader
    that finds several waiting takes them as one slice. Seq is implied by the position; the
    frames are one buffer with an end offset per entry, the event name one byte. Bounded by
    ``cap`` non-terminal entries plus the terminal one; never a wrapping ring (a replay from
    seq 0 needs the start).

    Readers wait on one future per log, created only while someone waits and replaced on every
    wake-up, so an append with no waiting reader wakes nobody.
    """

    __slots__ = (
        "_buf",
        "_ends",
        "_kinds",
        "_waiter",
        "_prefix",
        "cap",
        "finished",
        "gone",
        "timer",
        "stop_requested",
    )

    def __init__(self, cap: int, gen_id: object) -> None:
        self._buf = bytearray()
        self._ends = array("I")
        self._kinds = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._prefix = f"id: {gen_id}:"
        self.cap = cap
        self.finished = False
        self.gone = False
        self.timer: asyncio.TimerHandle | None = None
        self.stop_requested = False

    @property
    def last_seq(self) -> int:
        return len(self._kinds)

    def state(self) -> LogState:
        return LogState(len(self._kinds), self.finished)

    def entry(self, seq: int) -> Entry:
        i = seq - 1
        start = self._ends[i - 1] if i else 0
        name = _EVENT_NAMES[self._kinds[i]]
        # The frame is `<prefix><seq>\nevent: <name>\ndata: <data>\n\n`.
        skip = len(self._prefix) + len(str(seq)) + 8 + len(name) + 7
        data = self._buf[start + skip : self._ends[i] - 2].decode()
        return Entry(seq, name, data)

    def frames(self, after: int) -> tuple[bytes, int, int, bool]:
        """Every frame after seq ``after``, as one bytes: (frames, last seq in them, how many
        are `token` events, whether the terminal one is among them)."""
        last = len(self._kinds)
        if after >= last:
            return b"", after, 0, False
        start = self._ends[after - 1] if after > 0 else 0
        chunk = bytes(self._buf[start : self._ends[last - 1]])
        kinds = self._kinds[after:last]
        return chunk, last, kinds.count(_TOKEN), kinds[-1] in _TERMINAL

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _store(self, entry: Entry) -> None:
        kind = _event_id(entry.event)
        self._buf += (
            f"{self._prefix}{entry.seq}\nevent: {entry.event}\ndata: {entry.data}\n\n".encode()
        )
        self._ends.append(len(self._buf))
        self._kinds.append(kind)
        if entry.event in TERMINAL_EVENTS:
            self.finished = True

    def append(self, entry: Entry) -> None:
        """Strict append: seq must be last + 1, the log open, and room left (ValueError)."""
        if self.finished:
            raise ValueError(f"log already finished, cannot append seq {entry.seq}")
        expected = len(self._kinds) + 1
        if entry.seq != expected:
            raise ValueError(f"seq {entry.seq} out of order, expected {expected}")
        if entry.event not in TERMINAL_EVENTS and len(self._kinds) >= self.cap:
            raise ValueError(f"log full ({self.cap} events)")
        self._store(entry)
        self._wake()

    def offer(self, entries: Iterable[Entry]) -> int:
        """Tolerant feed (mirrors): keep the contiguous continuation, ignore what is already
        held, stop at the first gap or after the terminal entry. Returns the highest seq seen."""
        highest = 0
        added = False
        for entry in entries:
            highest = max(highest, entry.seq)
            if self.finished:
                continue
            expected = len(self._kinds) + 1
            if entry.seq != expected:
                continue  # duplicate (< expected) or beyond a gap (> expected): never skip
            if entry.event not in TERMINAL_EVENTS and len(self._kinds) >= self.cap:
                continue
            self._store(entry)
            added = True
        if added:
            self._wake()
        return highest

    def mark_gone(self) -> None:
        """The log vanished without a terminal entry: waiting readers raise KeyError."""
        self.gone = True
        self._wake()

    def changed(self) -> asyncio.Future[None]:
        """Done at the next change (an entry, the end, or the log going away); shared by every
        reader waiting, so never cancel it (`asyncio.wait` does not; `wait` shields it)."""
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    async def wait(self) -> None:
        """Wait for the next change (an entry, the end, or the log going away)."""
        await asyncio.shield(self.changed())

    def follower(self, after: int, key: object = None) -> LogFollower:
        return LogFollower(self, after, key)


class LogFollower:
    """Async iterator over a :class:`GenLog` from a cursor. Cancellation-safe: a cancelled
    ``__anext__`` (e.g. ``asyncio.wait_for`` used for keep-alive pings) loses nothing, the next
    call goes on from the same position."""

    __slots__ = ("_log", "_pos", "_key")

    def __init__(self, log: GenLog, after: int, key: object = None) -> None:
        self._log = log
        self._pos = max(int(after), 0)
        self._key = key

    @property
    def position(self) -> int:
        """The seq of the last entry returned (or the starting cursor)."""
        return self._pos

    def __aiter__(self) -> LogFollower:
        return self

    async def __anext__(self) -> Entry:
        log = self._log
        while True:
            if self._pos < log.last_seq:
                self._pos += 1
                return log.entry(self._pos)
            if log.finished:
                raise StopAsyncIteration
            if log.gone:
                raise KeyError(self._key)
            await log.wait()

    async def aclose(self) -> None:
        return None


class FrameFollower:
    """Reads a :class:`GenLog`'s frames from a cursor for an SSE response: `take` returns
    every frame waiting, as one bytes (one write however far behind the reader is); `wait`
    returns once there may be more. Cancellation-safe: a cancelled `wait` loses nothing."""

    __slots__ = ("_log", "_pos", "_key", "ended")

    def __init__(self, log: GenLog, after: int, key: object = None) -> None:
        self._log = log
        self._pos = max(int(after), 0)
        self._key = key
        self.ended = False

    def take(self) -> tuple[bytes, int]:
        """(every frame after the position, how many of them are `token` events); b"" when
        none is waiting. KeyError when the log went away without a terminal event."""
        chunk, self._pos, tokens, terminal = self._log.frames(self._pos)
        if terminal:
            self.ended = True
        elif not chunk and self._log.gone:
            raise KeyError(self._key)
        return chunk, tokens

    def changed(self) -> asyncio.Future[None]:
        log = self._log
        if self._pos < log.last_seq or log.finished or log.gone:
            return _done()
        return log.changed()

    async def aclose(self) -> None:
        return None


def _done() -> asyncio.Future[None]:
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


class _Failing:
    """An iterator whose first ``__anext__`` raises (unknown log, backend down)."""

    __slots__ = ("_exc",)

    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    def __aiter__(self) -> _Failing:
        return self

    async def __anext__(self) -> Entry:
        raise self._exc

    def take(self) -> tuple[bytes, int]:
        raise self._exc

    def changed(self) -> asyncio.Future[None]:
        return _done()

    async def aclose(self) -> None:
        return None

    ended = False


class MemoryEventLog(EventLog):
    """Event logs kept in this process (no Redis): every log here is owned here."""

    def __init__(
        self,
        *,
        retention_seconds: float,
        max_events: int,
        ttl_seconds: float,
        on_drop: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        super().__init__(
            retention_seconds=retention_seconds, max_events=max_events, ttl_seconds=ttl_seconds
        )
        self._logs: dict[uuid.UUID, GenLog] = {}
        self._handler: StopHandler | None = None
        self._on_drop = on_drop

    # -- internals shared with the Redis implementation --------------------------------------

    def get(self, gen_id: uuid.UUID) -> GenLog | None:
        return self._logs.get(gen_id)

    def __len__(self) -> int:
        return len(self._logs)

    def stoppable_ids(self) -> list[uuid.UUID]:
        """Running logs held here whose stop handler has not run yet."""
        return [g for g, log in self._logs.items() if not log.finished and not log.stop_requested]

    def _drop(self, gen_id: uuid.UUID, log: GenLog) -> None:
        if self._logs.get(gen_id) is not log:
            return
        del self._logs[gen_id]
        log.timer = None
        if not log.finished:
            log.mark_gone()
        if self._on_drop is not None:
            self._on_drop(gen_id)

    def _schedule_drop(self, gen_id: uuid.UUID, log: GenLog, delay: float) -> None:
        if log.timer is not None:
            log.timer.cancel()
        log.timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._drop, gen_id, log)

    def _require(self, gen_id: uuid.UUID) -> GenLog:
        log = self._logs.get(gen_id)
        if log is None:
            raise KeyError(gen_id)
        return log

    def finish_now(self, gen_id: uuid.UUID, entry: Entry) -> None:
        """Synchronous part of :meth:`finish`: store the terminal entry, start retention."""
        if entry.event not in TERMINAL_EVENTS:
            raise ValueError(f"{entry.event!r} is not a terminal event")
        log = self._require(gen_id)
        log.append(entry)
        self._schedule_drop(gen_id, log, self.retention_seconds)

    def deliver_stop(self, gen_id: uuid.UUID, last_index: int | None, *, once: bool) -> bool:
        """Run the stop handler for a running log held here. ``once``: skip if already done."""
        log = self._logs.get(gen_id)
        if log is None or log.finished:
            return False
        if once and log.stop_requested:
            return True
        log.stop_requested = True
        if self._handler is not None:
            try:
                self._handler(gen_id, last_index)
            except Exception:
                logger.exception("stop handler failed for generation %s", gen_id)
        return True

    # -- EventLog ------------------------------------------------------------------------------

    async def create(self, gen_id: uuid.UUID, meta: dict[str, str]) -> None:
        if gen_id in self._logs:
            raise ValueError(f"generation {gen_id} already has a log")
        log = GenLog(self.max_events, gen_id)
        self._logs[gen_id] = log
        self._schedule_drop(gen_id, log, self.ttl_seconds)

    def append(self, gen_id: uuid.UUID, entry: Entry) -> None:
        if entry.event in TERMINAL_EVENTS:
            raise ValueError("a terminal event goes through finish()")
        self._require(gen_id).append(entry)

    async def finish(self, gen_id: uuid.UUID, entry: Entry) -> None:
        self.finish_now(gen_id, entry)

    def follow(self, gen_id: uuid.UUID, after: int) -> Follower:
        log = self._logs.get(gen_id)
        if log is None:
            return _Failing(KeyError(gen_id))
        return log.follower(after, gen_id)

    def frames(self, gen_id: uuid.UUID, after: int) -> FrameReader:
        log = self._logs.get(gen_id)
        if log is None:
            return _Failing(KeyError(gen_id))
        return FrameFollower(log, after, gen_id)

    async def state(self, gen_id: uuid.UUID) -> LogState | None:
        log = self._logs.get(gen_id)
        return None if log is None else log.state()

    async def request_stop(self, gen_id: uuid.UUID, last_index: int | None) -> None:
        self.deliver_stop(gen_id, last_index, once=False)

    def set_stop_handler(self, handler: StopHandler) -> None:
        self._handler = handler

    async def mark_lost(self, gen_id: uuid.UUID, entry: Entry) -> bool:
        log = self._logs.get(gen_id)
        if log is None or log.finished or entry.seq != log.last_seq + 1:
            return False
        self.finish_now(gen_id, entry)
        return True

    async def close(self) -> None:
        for log in self._logs.values():
            if log.timer is not None:
                log.timer.cancel()
                log.timer = None
