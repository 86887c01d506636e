"""Event logs in Redis Streams, shared by every process (``ALICE_REDIS_URL``).

Keys, hash-tagged by reply id (``{<gen>}``) so that one reply's keys stay together:

- ``alice:gen:{<gen>}:events``: Stream, entry id ``0-<seq>``, fields ``e`` (event), ``d`` (data).
  Explicit ids fence writers: a duplicate or an out-of-order XADD is refused by Redis.
- ``alice:gen:{<gen>}:meta``: hash ``status`` (running|finished), ``owner``, ``conversation_id``,
  ``user_id``, ``last_seq`` (0 while running, the terminal seq once finished).
- ``alice:gen:{<gen>}:stop``: ``{"last_index": n|null}``, a durable stop request.

Every key expires: ``ttl_seconds`` while running, ``retention_seconds`` once finished.

Three parts, one per role, each with its own task(s):

- `writer.Writer`: the replies generated here, written in batches (`batch.lua`).
- `mirror.Mirrors`: local copies of replies generated elsewhere, for the readers here
  (a loader for the catch-up, a tailer on its own connection for the rest).
- `control.Control`: stop requests, over pub/sub backed by a polled key.

The owner's own copy of a reply it generates is a :class:`MemoryEventLog`, so local readers of
local replies never read Redis. A standalone (or Sentinel-managed) Redis: the batch script and
the stop MGET span several replies' keys, which Redis Cluster would refuse (CROSSSLOT).
Install ``hiredis`` for production loads: redis-py's pure-Python reply parser costs ~27 µs per
stream entry read by the tailer, hiredis ~3 µs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from redis.asyncio import BlockingConnectionPool, Redis

from alice.services.eventlog.base import (
    TERMINAL_EVENTS,
    Entry,
    EventLog,
    Follower,
    FrameReader,
    LogState,
    LogUnavailableError,
    StopHandler,
)
from alice.services.eventlog.memory import MemoryEventLog
from alice.services.eventlog.redis.control import Control
from alice.services.eventlog.redis.keys import DOWN_ERRORS, Keys, warner
from alice.services.eventlog.redis.mirror import Mirrors, parse_entries
from alice.services.eventlog.redis.writer import Writer

__all__ = ["RedisEventLog", "default_owner_id"]

logger = logging.getLogger(__name__)


def default_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RedisEventLog(EventLog):
    def __init__(
        self,
        url: str,
        *,
        retention_seconds: float,
        max_events: int,
        ttl_seconds: float,
        owner_id: str | None = None,
        key_prefix: str = "alice:gen:",
        client_name: str = "alice",
        tailer_client_name: str = "alice-tailer",
        flush_interval: float = 0.02,
        flush_batch: int = 256,
        stop_poll_interval: float = 1.0,
        vanish_check_interval: float = 5.0,
        tail_block_ms: int = 250,
        tail_count: int = 512,
        tail_interval: float = 0.02,
        finish_timeout: float = 2.0,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_pending: int = 500_000,
        pool_size: int = 16,
    ) -> None:
        super().__init__(
            retention_seconds=retention_seconds, max_events=max_events, ttl_seconds=ttl_seconds
        )
        self.owner_id = owner_id or default_owner_id()
        keys = Keys(key_prefix)
        self._keys = keys
        self.control_channel = keys.control
        cap = self.max_events + 1  # MAXLEN ~ safety net: every valid log fits
        ttl_ms = max(int(self.ttl_seconds * 1000), 1)
        retention_ms = max(int(self.retention_seconds * 1000), 1)
        self._finish_timeout = finish_timeout

        # Shared commands (writer, loader, stop, state): a bounded pool where a burst waits for
        # a connection instead of opening one per request.
        self.redis: Redis = Redis.from_pool(
            BlockingConnectionPool.from_url(
                url,
                max_connections=pool_size,
                timeout=socket_timeout,
                decode_responses=True,
                protocol=2,  # the reply shapes parsed here
                client_name=client_name,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                health_check_interval=30,
            )
        )
        # The tailer's one connection: its socket timeout must outlast XREAD BLOCK.
        self._tail_redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            protocol=2,
            client_name=tailer_client_name,
            socket_timeout=socket_timeout + tail_block_ms / 1000,
            socket_connect_timeout=connect_timeout,
            max_connections=1,
        )
        warn = warner()
        self._local = MemoryEventLog(
            retention_seconds=retention_seconds,
            max_events=max_events,
            ttl_seconds=ttl_seconds,
            on_drop=self._on_local_drop,
        )
        self.writer = Writer(
            self.redis,
            keys,
            warn,
            ttl_ms=ttl_ms,
            retention_ms=retention_ms,
            cap=cap,
            flush_interval=flush_interval,
            flush_batch=flush_batch,
            finish_timeout=finish_timeout,
            max_pending=max_pending,
        )
        self.mirrors = Mirrors(
            self.redis,
            self._tail_redis,
            keys,
            warn,
            max_events=self.max_events,
            cap=cap,
            tail_block_ms=tail_block_ms,
            tail_count=tail_count,
            tail_interval=tail_interval,
            vanish_check_interval=vanish_check_interval,
        )
        self._control = Control(
            self.redis, keys, self._local, warn, ttl_ms=ttl_ms, poll_interval=stop_poll_interval
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def writer_ok(self) -> bool:
        """Whether the last write batch reached Redis."""
        return self.writer.ok

    @property
    def control_ok(self) -> bool:
        """Whether the stop channel is subscribed."""
        return self._control.ok

    def _on_local_drop(self, gen_id: uuid.UUID) -> None:
        self.writer.forget(gen_id)

    def _is_closing(self) -> bool:
        return self._closing

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        closing = self._is_closing
        self._tasks = [
            asyncio.create_task(self.writer.run(closing), name="eventlog-writer"),
            asyncio.create_task(self.mirrors.tail_forever(closing), name="eventlog-tailer"),
            asyncio.create_task(self.mirrors.load_forever(closing), name="eventlog-loader"),
            asyncio.create_task(self._control.listen_forever(closing), name="eventlog-control"),
            asyncio.create_task(self._control.poll_forever(closing), name="eventlog-stop-poll"),
        ]

    async def close(self) -> None:
        if self._tasks and self.writer.pending:
            await self.flush(self._finish_timeout)
        self._closing = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                logger.warning("event log: task %s did not stop", task.get_name())
        self.mirrors.close()
        await self._local.close()
        for client in (self._tail_redis, self.redis):
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001 - closing a broken client must not fail shutdown
                logger.debug("event log: closing a Redis client failed", exc_info=True)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except DOWN_ERRORS:
            return False

    async def flush(self, wait_seconds: float | None = None) -> bool:
        return await self.writer.flush(wait_seconds)

    # -- the owner's side ----------------------------------------------------------------------

    async def create(self, gen_id: uuid.UUID, meta: dict[str, str]) -> None:
        await self._local.create(gen_id, meta)
        mapping = {"owner": self.owner_id, **meta, "status": "running", "last_seq": "0"}
        await self.writer.create(gen_id, mapping)

    def append(self, gen_id: uuid.UUID, entry: Entry) -> None:
        self._local.append(gen_id, entry)
        self.writer.append(gen_id, entry)

    async def finish(self, gen_id: uuid.UUID, entry: Entry) -> None:
        self._local.finish_now(gen_id, entry)
        await self.writer.finish(gen_id, entry)

    async def mark_lost(self, gen_id: uuid.UUID, entry: Entry) -> bool:
        if entry.event not in TERMINAL_EVENTS:
            raise ValueError(f"{entry.event!r} is not a terminal event")
        local = self._local.get(gen_id)
        if local is not None:
            if local.finished or entry.seq != local.last_seq + 1:
                return False
            await self.finish(gen_id, entry)
            return True
        return await self.writer.mark_lost(gen_id, entry)

    def fenced(self, gen_id: uuid.UUID) -> bool:
        """Whether this process writes no more of a reply it generates (another writer, the
        reaper, holds its log)."""
        return self.writer.fenced(gen_id)

    # -- readers -------------------------------------------------------------------------------

    async def state(self, gen_id: uuid.UUID) -> LogState | None:
        local = self._local.get(gen_id)
        if local is not None:
            return local.state()
        mirrored = self.mirrors.finished_state(gen_id)
        if mirrored is not None:
            return mirrored
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hmget(self._keys.meta(gen_id), ["status", "last_seq"])
            pipe.xrevrange(self._keys.events(gen_id), count=1)
            (status, meta_last), top = await pipe.execute()
        except DOWN_ERRORS as exc:
            raise LogUnavailableError(str(exc)) from exc
        if status is None:
            return None
        entries = parse_entries(top)
        last = entries[0].seq if entries else 0
        finished = status == "finished"
        if finished and meta_last and str(meta_last).isdigit():
            last = int(meta_last)
        return LogState(last, finished)

    def follow(self, gen_id: uuid.UUID, after: int) -> Follower:
        local = self._local.get(gen_id)
        if local is not None:
            return local.follower(after, gen_id)
        return self.mirrors.follow(gen_id, after)

    def frames(self, gen_id: uuid.UUID, after: int) -> FrameReader:
        if self._local.get(gen_id) is not None:
            return self._local.frames(gen_id, after)
        return self.mirrors.frames(gen_id, after)

    # -- stop ----------------------------------------------------------------------------------

    def set_stop_handler(self, handler: StopHandler) -> None:
        self._local.set_stop_handler(handler)

    async def request_stop(self, gen_id: uuid.UUID, last_index: int | None) -> None:
        if self._local.get(gen_id) is not None:
            self._local.deliver_stop(gen_id, last_index, once=False)
            return
        await self._control.request_stop(gen_id, last_index)
