"""The per-reply event log that SSE streams read from (SPEC section 6).

One log per generation (keyed by the assistant message id). The owner (the process running the
generation) appends entries with contiguous sequence numbers 1, 2, ... and ends the log with one
terminal entry; any number of readers follow it from a cursor, live, to the terminal entry.
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

TERMINAL_EVENTS: frozenset[str] = frozenset({"done", "error", "snapshot"})

StopHandler = Callable[[uuid.UUID, "int | None"], None]


@dataclass(frozen=True, slots=True)
class Entry:
    """One logged SSE event: ``seq`` (1, 2, ... per generation), event name, JSON data text."""

    seq: int
    event: str
    data: str

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


@dataclass(frozen=True, slots=True)
class LogState:
    """What a log holds: the highest contiguous seq and whether the terminal entry is in."""

    last_seq: int
    finished: bool


class Follower(Protocol):
    """A reader of one log from a cursor: an async iterator of entries, closed with `aclose`
    (which releases what it holds: a remote log's local copy)."""

    def __aiter__(self) -> Follower: ...

    async def __anext__(self) -> Entry: ...

    async def aclose(self) -> None: ...


class FrameReader(Protocol):
    """A reader of one log's SSE frames from a cursor (what the SSE responses send): each
    event's frame (`id`, `event`, `data`) was encoded once, when it entered the log."""

    @property
    def ended(self) -> bool:
        """The terminal event has been taken."""
        ...

    def take(self) -> tuple[bytes, int]:
        """Every frame waiting after the position, as one bytes (b"" when none), and how many
        of them are `token` events. KeyError when the log went away without a terminal event,
        LogUnavailableError when it cannot be reached."""
        ...

    def changed(self) -> asyncio.Future[Any]:
        """Done once `take` may have more; shared by the log's readers: never cancel it."""
        ...

    async def aclose(self) -> None: ...


class LogUnavailableError(Exception):
    """The log cannot be reached from this process (Redis down)."""


class EventLog(ABC):
    """Per-generation append-only event log.

    ``retention_seconds``: how long a finished log stays readable.
    ``max_events``: capacity safety net per log (``ALICE_AI_MAX_TOKENS + 16``); the terminal entry
    always fits.
    ``ttl_seconds``: expiry of a log that never finishes (generation max seconds + retention).
    """

    def __init__(self, *, retention_seconds: float, max_events: int, ttl_seconds: float) -> None:
        if max_events < 1:
            raise ValueError("max_events must be positive")
        self.retention_seconds = float(retention_seconds)
        self.max_events = int(max_events)
        self.ttl_seconds = float(ttl_seconds)

    @abstractmethod
    async def create(self, gen_id: uuid.UUID, meta: dict[str, str]) -> None:
        """Start a log owned by this process (meta: conversation_id, user_id, owner...)."""

    @abstractmethod
    def append(self, gen_id: uuid.UUID, entry: Entry) -> None:
        """Owner only, non-blocking. ``entry.seq`` must be last + 1 (else ValueError); a terminal
        event must go through :meth:`finish`. KeyError if the log is not owned here."""

    @abstractmethod
    async def finish(self, gen_id: uuid.UUID, entry: Entry) -> None:
        """Append the terminal entry, flush everything written so far (best effort: never raises
        for an unreachable backend) and keep the log readable for ``retention_seconds``."""

    @abstractmethod
    def follow(self, gen_id: uuid.UUID, after: int) -> Follower:
        """Yield every entry with seq > ``after`` in order, no gap, no duplicate, live; end after
        the terminal entry. Raises KeyError (before yielding anything) when the log is unknown
        here, or later if it vanishes without a terminal entry (expired, dropped);
        LogUnavailableError when the backend cannot be reached to start reading."""

    @abstractmethod
    def frames(self, gen_id: uuid.UUID, after: int) -> FrameReader:
        """The log's SSE frames after ``after``, for a response (see :class:`FrameReader`);
        the same rules as :meth:`follow`."""

    @abstractmethod
    async def state(self, gen_id: uuid.UUID) -> LogState | None:
        """The log's state, or None when it is unknown (never existed or expired).
        LogUnavailableError when the backend cannot be reached."""

    @abstractmethod
    async def request_stop(self, gen_id: uuid.UUID, last_index: int | None) -> None:
        """Ask the owner of this generation, in any process, to stop it."""

    @abstractmethod
    def set_stop_handler(self, handler: StopHandler) -> None:
        """Register the callback run (in the event loop) when a stop request arrives for a
        generation this process owns and has not finished."""

    @abstractmethod
    async def mark_lost(self, gen_id: uuid.UUID, entry: Entry) -> bool:
        """Reaper: append ``entry`` (a terminal, e.g. error GENERATION_LOST, with seq = last + 1)
        to a running log whose owner died, then start retention. Returns whether it was written
        (False: unknown log, already finished, or the seq is taken: the owner is alive)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start background tasks."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background tasks and release connections."""

    async def flush(self, wait_seconds: float | None = None) -> bool:
        """Wait until everything appended so far is stored; False if that did not happen in
        ``wait_seconds`` (backend down). Nothing to do in memory."""
        return True

    async def ping(self) -> bool:
        """Whether the backend answers (for /ready)."""
        return True
