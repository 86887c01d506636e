"""Per-reply event logs that SSE streams read from: in process, or in Redis Streams."""

from __future__ import annotations

from alice.services.eventlog.base import (
    TERMINAL_EVENTS,
    Entry,
    EventLog,
    Follower,
    LogState,
    LogUnavailableError,
    StopHandler,
)
from alice.services.eventlog.memory import MemoryEventLog

__all__ = [
    "TERMINAL_EVENTS",
    "Entry",
    "EventLog",
    "Follower",
    "LogState",
    "LogUnavailableError",
    "MemoryEventLog",
    "StopHandler",
    "make_event_log",
]


def make_event_log(
    redis_url: str | None,
    *,
    retention_seconds: float,
    max_events: int,
    ttl_seconds: float,
    key_prefix: str = "alice:gen:",
) -> EventLog:
    """A :class:`RedisEventLog` when ``redis_url`` is set, else a :class:`MemoryEventLog`.
    Call ``await log.start()`` before use and ``await log.close()`` at shutdown."""
    if redis_url:
        from alice.services.eventlog.redis import RedisEventLog

        return RedisEventLog(
            redis_url,
            retention_seconds=retention_seconds,
            max_events=max_events,
            ttl_seconds=ttl_seconds,
            key_prefix=key_prefix,
        )
    return MemoryEventLog(
        retention_seconds=retention_seconds, max_events=max_events, ttl_seconds=ttl_seconds
    )
