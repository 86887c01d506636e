"""Event logs in Redis Streams, shared by every process (``ALICE_REDIS_URL``).

Keys, hash-tagged by generation id (``{<gen>}``) so that one generation's keys stay together:

- ``alice:gen:{<gen>}:events``: Stream, entry id ``0-<seq>``, fields ``e`` (event), ``d`` (data).
  Explicit ids fence writers: a duplicate or an out-of-order XADD is refused by Redis.
- ``alice:gen:{<gen>}:meta``: hash ``status`` (running|finished), ``owner``, ``conversation_id``,
  ``user_id``, ``last_seq`` (0 while running, the terminal seq once finished).
- ``alice:gen:{<gen>}:stop``: ``{"last_index": n|null}``, a durable stop request.

Every key expires: ``ttl_seconds`` while running, ``retention_seconds`` once finished. Stop
signals go over the channel ``alice:gen:control`` (``{"stop": "<gen>", "last_index": n}``) and
are backed by the ``…:stop`` key, polled every second (one MGET) for the generations owned here.

Per process: one writer task (queued appends sent every ≤ 20 ms or 256 entries as ONE call of a
batch script doing the XADDs in order, so a batch costs one round trip and one reply), one loader
(catch-up XRANGE of newly followed remote logs, batched), one tailer with one dedicated
connection (XREAD over every followed remote log, feeding local mirrors that readers wait on),
one control subscriber, one poller. The owner's own copy is a :class:`MemoryEventLog`, so local
readers of local generations never read Redis.

A standalone (or Sentinel-managed) Redis: the batch script and the stop MGET span several
generations' keys, which Redis Cluster would refuse (CROSSSLOT).
Install ``hiredis`` for production loads: redis-py's pure-Python reply parser costs ~27 µs per
stream entry read by the tailer, hiredis ~3 µs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from alice.services.eventlog.base import (
    TERMINAL_EVENTS,
    Entry,
    EventLog,
    LogState,
    LogUnavailableError,
    StopHandler,
)
from alice.services.eventlog.memory import GenLog, LogFollower, MemoryEventLog

logger = logging.getLogger(__name__)

# Errors that mean "Redis cannot be reached" (or answered garbage), as opposed to a refusal.
_DOWN_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

# The reaper's terminal entry: only on a running log, only as the next id (fencing).
_MARK_LOST_LUA = """
local status = redis.call('HGET', KEYS[2], 'status')
if (not status) or status == 'finished' then return 0 end
local res = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], ARGV[1],
                        'e', ARGV[2], 'd', ARGV[3])
if type(res) == 'table' and res.err then return 0 end
redis.call('HSET', KEYS[2], 'status', 'finished', 'last_seq', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return 1
"""

# The writer's batch: one script call per batch (≤ 256 entries), the records in queue order.
# ARGV[1] running TTL ms, ARGV[2] retention ms, ARGV[3] MAXLEN cap, then records:
#   'x' (or 'r': a retry), id, event, data   KEYS: events
#       XADD with the explicit id 0-<seq>; a refusal (the id is taken: another writer) fences
#       the key for the rest of the batch; a retry's refusal means it was written already.
#   'f', id, seq                              KEYS: events, meta, stop
#       the owner's end: only if its terminal entry is the stream's top and nobody finished the
#       log first (after the reaper's mark_lost the zombie owner's end changes nothing).
#   'm', n, field, value, ...                 KEYS: meta    (create, retried)
# Returns {record number, error, ...} for the refused records.
_BATCH_LUA = """
local ttl, ret, cap = ARGV[1], ARGV[2], ARGV[3]
local k, a, rec = 1, 4, 0
local out, fenced = {}, {}
while a <= #ARGV do
  rec = rec + 1
  local kind = ARGV[a]
  if kind == 'x' or kind == 'r' then
    local key = KEYS[k]
    if not fenced[key] then
      local r = redis.pcall('XADD', key, 'MAXLEN', '~', cap, ARGV[a+1],
                            'e', ARGV[a+2], 'd', ARGV[a+3])
      if type(r) == 'table' and r.err then
        if kind == 'x' then
          fenced[key] = true
          out[#out+1] = rec
          out[#out+1] = r.err
        end
      elseif ARGV[a+1] == '0-1' then
        redis.call('PEXPIRE', key, ttl)
      end
    end
    k = k + 1
    a = a + 4
  elseif kind == 'f' then
    local events, meta, stop = KEYS[k], KEYS[k+1], KEYS[k+2]
    if not fenced[events] then
      local top = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
      if #top > 0 and top[1][1] == ARGV[a+1]
         and redis.call('HGET', meta, 'status') ~= 'finished' then
        redis.call('HSET', meta, 'status', 'finished', 'last_seq', ARGV[a+2])
        redis.call('PEXPIRE', events, ret)
        redis.call('PEXPIRE', meta, ret)
        redis.call('PEXPIRE', stop, ret)
      end
    end
    k = k + 3
    a = a + 3
  elseif kind == 'm' then
    local n = tonumber(ARGV[a+1])
    redis.call('HSET', KEYS[k], unpack(ARGV, a+2, a+1+2*n))
    redis.call('PEXPIRE', KEYS[k], ttl)
    k = k + 1
    a = a + 2 + 2*n
  else
    return redis.error_reply('bad record ' .. tostring(kind))
  end
end
return out
"""

_X, _META, _FIN, _FLUSH = 0, 1, 2, 3


class _Op:
    """One queued write for the writer task."""

    __slots__ = ("kind", "gen", "entry", "meta", "fut", "retried")

    def __init__(
        self,
        kind: int,
        gen: uuid.UUID | None,
        entry: Entry | None = None,
        meta: dict[str, str] | None = None,
        fut: asyncio.Future[None] | None = None,
    ) -> None:
        self.kind = kind
        self.gen = gen
        self.entry = entry
        self.meta = meta
        self.fut = fut
        self.retried = False

    def resolve(self) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)


class _Owned:
    """Redis-side bookkeeping of a generation owned by this process."""

    __slots__ = ("skip", "events", "fin_keys")

    def __init__(self, events: bytes, fin_keys: bytes) -> None:
        self.skip = False  # fenced (another writer) or dropped: stop sending its entries
        self.events = events  # packed key of the stream
        self.fin_keys = fin_keys  # packed keys of the finish record (events, meta, stop)


class _Mirror:
    """Local copy of a remote generation, fed by the catch-up XRANGE and the tailer."""

    __slots__ = (
        "gen",
        "key",
        "packed_key",
        "meta_key",
        "log",
        "readers",
        "ready",
        "read_from",
        "tailing",
    )

    def __init__(self, gen: uuid.UUID, key: str, meta_key: str, cap: int) -> None:
        self.gen = gen
        self.key = key
        self.packed_key = _bulk(key.encode())
        self.meta_key = meta_key
        self.log = GenLog(cap)
        self.readers = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.read_from = 0  # highest stream seq seen (the XREAD cursor)
        self.tailing = False


class _RemoteFollower:
    """A reader of a remote generation: holds a reader count on the mirror until it ends, is
    closed, or is garbage collected; waits on memory only. Cancellation-safe like
    :class:`LogFollower`."""

    __slots__ = ("_owner", "_mirror", "_after", "_inner", "_released", "__weakref__")

    def __init__(self, owner: RedisEventLog, mirror: _Mirror, after: int) -> None:
        self._owner = owner
        self._mirror = mirror
        self._after = after
        self._inner: LogFollower | None = None
        self._released = False
        mirror.readers += 1

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._mirror.readers -= 1
            if self._mirror.readers <= 0:
                self._owner._drop_mirror(self._mirror)

    def __aiter__(self) -> _RemoteFollower:
        return self

    async def __anext__(self) -> Entry:
        if self._released:
            raise StopAsyncIteration
        try:
            if self._inner is None:
                await asyncio.shield(self._mirror.ready)
                self._inner = self._mirror.log.follower(self._after, self._mirror.gen)
            return await self._inner.__anext__()
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._release()
            raise

    async def aclose(self) -> None:
        self._release()

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:  # noqa: S110 - never raise from a finalizer
            pass


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string (commands are packed here: redis-py's generic packing costs more
    than the rest of a token's trip through the log)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _pack(parts: list[bytes]) -> bytes:
    return b"*%d\r\n%s" % (len(parts), b"".join(parts))


_XREAD_HEAD = [_bulk(b"XREAD"), _bulk(b"COUNT")]
_BULK_X, _BULK_R, _BULK_F, _BULK_M = (_bulk(k) for k in (b"x", b"r", b"f", b"m"))


def _parse_raw_entries(items: Any) -> list[Entry]:
    """Entries of a raw RESP2 XREAD reply: ``[[id, [field, value, ...]], ...]``."""
    out: list[Entry] = []
    for entry_id, fields in items or ():
        ms, _, seq = str(entry_id).partition("-")
        if ms != "0" or not seq.isdigit():
            continue
        event = data = ""
        for i in range(0, len(fields or ()) - 1, 2):
            if fields[i] == "e":
                event = fields[i + 1]
            elif fields[i] == "d":
                data = fields[i + 1]
        out.append(Entry(int(seq), event, data))
    return out


def _parse_entries(items: Any) -> list[Entry]:
    out: list[Entry] = []
    for entry_id, fields in items or ():
        ms, _, seq = str(entry_id).partition("-")
        if ms != "0" or not seq.isdigit():
            continue
        fields = fields or {}
        out.append(Entry(int(seq), str(fields.get("e", "")), str(fields.get("d", ""))))
    return out


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
        self._prefix = key_prefix
        self.control_channel = f"{key_prefix}control"
        self._cap = self.max_events + 1  # MAXLEN ~ safety net: every valid log fits
        self._ttl_ms = max(int(self.ttl_seconds * 1000), 1)
        self._retention_ms = max(int(self.retention_seconds * 1000), 1)
        self._flush_interval = flush_interval
        self._flush_batch = flush_batch
        self._stop_poll_interval = stop_poll_interval
        self._vanish_check_interval = vanish_check_interval
        self._tail_block_ms = tail_block_ms
        self._tail_count = tail_count
        self._tail_interval = tail_interval
        self._finish_timeout = finish_timeout
        self._max_pending = max_pending

        # Shared commands (writer, loader, poller, pub/sub, state, stop): a bounded pool where a
        # burst waits for a connection instead of opening one per request.
        self._redis: Redis = Redis.from_pool(
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
        self._mark_lost_script = self._redis.register_script(_MARK_LOST_LUA)
        self._batch_sha = _bulk(
            hashlib.sha1(_BATCH_LUA.encode(), usedforsecurity=False).hexdigest().encode()
        )

        self._local = MemoryEventLog(
            retention_seconds=retention_seconds,
            max_events=max_events,
            ttl_seconds=ttl_seconds,
            on_drop=self._on_local_drop,
        )
        self._owned: dict[uuid.UUID, _Owned] = {}
        self._mirrors: dict[uuid.UUID, _Mirror] = {}

        self._queue: deque[_Op] = deque()
        self._wake = asyncio.Event()  # something queued
        self._full = asyncio.Event()  # a batch is full, or a flush is awaited
        self._tail_wake = asyncio.Event()  # a mirror started tailing
        self._to_load: deque[_Mirror] = deque()  # followed remote logs awaiting catch-up
        self._load_wake = asyncio.Event()
        self._poll_now = asyncio.Event()  # check the stop keys now (after a resubscribe)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._last_warn: dict[str, float] = {}
        self.writer_ok = True
        self.control_ok = False

    # -- helpers -------------------------------------------------------------------------------

    def _key(self, gen_id: uuid.UUID, part: str) -> str:
        return f"{self._prefix}{{{gen_id}}}:{part}"

    def _warn(self, what: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(what, -1e9) >= 10.0:
            self._last_warn[what] = now
            logger.log(level, msg, *args)

    def _owned_keys(self, gen_id: uuid.UUID) -> _Owned:
        events, meta, stop = (
            _bulk(self._key(gen_id, part).encode()) for part in ("events", "meta", "stop")
        )
        return _Owned(events, events + meta + stop)

    def _on_local_drop(self, gen_id: uuid.UUID) -> None:
        self._owned.pop(gen_id, None)

    def _enqueue(self, op: _Op) -> None:
        self._queue.append(op)
        if len(self._queue) >= self._flush_batch:
            self._full.set()
        self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._writer_loop(), name="eventlog-writer"),
            asyncio.create_task(self._tail_loop(), name="eventlog-tailer"),
            asyncio.create_task(self._loader_loop(), name="eventlog-loader"),
            asyncio.create_task(self._control_loop(), name="eventlog-control"),
            asyncio.create_task(self._poll_loop(), name="eventlog-stop-poll"),
        ]

    async def close(self) -> None:
        if self._tasks and self._queue:
            await self.flush(self._finish_timeout)
        self._closing = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                logger.warning("event log: task %s did not stop", task.get_name())
        for mirror in list(self._mirrors.values()):
            # Readers of remote replies end (KeyError) instead of waiting for ever.
            self._forget_mirror(mirror, LogUnavailableError("event log closed"))
            mirror.tailing = False
            mirror.log.mark_gone()
        await self._local.close()
        for client in (self._tail_redis, self._redis):
            with contextlib.suppress(Exception):
                await client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except _DOWN_ERRORS:
            return False

    async def flush(self, wait_seconds: float | None = None) -> bool:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Op(_FLUSH, None, fut=fut))
        self._full.set()
        try:
            await asyncio.wait_for(asyncio.shield(fut), wait_seconds)
        except TimeoutError:
            return False
        return True

    # -- owner side ----------------------------------------------------------------------------

    async def create(self, gen_id: uuid.UUID, meta: dict[str, str]) -> None:
        await self._local.create(gen_id, meta)
        self._owned[gen_id] = self._owned_keys(gen_id)
        mapping = {"owner": self.owner_id, **meta, "status": "running", "last_seq": "0"}
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(self._key(gen_id, "meta"), mapping=mapping)  # type: ignore[arg-type]  # redis-py types Mapping invariantly
            pipe.pexpire(self._key(gen_id, "meta"), self._ttl_ms)
            await pipe.execute()
        except _DOWN_ERRORS as exc:
            self._warn("create", "event log: Redis unreachable at create (%s); will retry", exc)
            self._enqueue(_Op(_META, gen_id, meta=mapping))

    def append(self, gen_id: uuid.UUID, entry: Entry) -> None:
        self._local.append(gen_id, entry)
        owned = self._owned.get(gen_id)
        if owned is None or owned.skip:
            return
        if len(self._queue) >= self._max_pending:
            owned.skip = True
            self._warn("pending", "event log: write queue full, generation %s not mirrored", gen_id)
            return
        self._enqueue(_Op(_X, gen_id, entry))

    async def finish(self, gen_id: uuid.UUID, entry: Entry) -> None:
        self._local.finish_now(gen_id, entry)
        owned = self._owned.get(gen_id)
        if owned is None or owned.skip:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Op(_X, gen_id, entry))
        self._enqueue(_Op(_FIN, gen_id, entry=entry, fut=fut))
        self._full.set()
        try:
            await asyncio.wait_for(asyncio.shield(fut), self._finish_timeout)
        except TimeoutError:
            logger.warning(
                "event log: the end of generation %s is not in Redis yet (unreachable); "
                "it stays queued",
                gen_id,
            )

    async def mark_lost(self, gen_id: uuid.UUID, entry: Entry) -> bool:
        if entry.event not in TERMINAL_EVENTS:
            raise ValueError(f"{entry.event!r} is not a terminal event")
        local = self._local.get(gen_id)
        if local is not None:
            if local.finished or entry.seq != local.last_seq + 1:
                return False
            await self.finish(gen_id, entry)
            return True
        keys = [self._key(gen_id, "events"), self._key(gen_id, "meta"), self._key(gen_id, "stop")]
        args = [f"0-{entry.seq}", entry.event, entry.data, self._cap, entry.seq, self._retention_ms]
        try:
            written = await self._mark_lost_script(keys=keys, args=args)  # type: ignore[arg-type]
        except _DOWN_ERRORS as exc:
            raise LogUnavailableError(str(exc)) from exc
        return bool(written)

    # -- writer --------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Op]:
        ops: list[_Op] = []
        xadds = 0
        queue = self._queue
        while queue and xadds < self._flush_batch:
            op = queue.popleft()
            if op.gen is not None and op.kind != _META:
                owned = self._owned.get(op.gen)
                if owned is not None and owned.skip:
                    op.resolve()  # fenced (another writer) or over the queue limit
                    continue
            if op.kind == _X:
                xadds += 1
            ops.append(op)
        return ops

    async def _write_batch(self, ops: list[_Op]) -> None:
        keys: list[bytes] = []
        args: list[bytes] = [
            _bulk(b"%d" % self._ttl_ms),
            _bulk(b"%d" % self._retention_ms),
            _bulk(b"%d" % self._cap),
        ]
        nkeys = 0
        records: list[_Op] = []
        for op in ops:
            gen = op.gen
            if gen is None:
                continue
            owned = self._owned.get(gen) or self._owned_keys(gen)
            entry = op.entry
            if op.kind == _X and entry is not None:
                keys.append(owned.events)
                nkeys += 1
                data = entry.data.encode()
                args += (
                    _BULK_R if op.retried else _BULK_X,
                    _bulk(b"0-%d" % entry.seq),
                    _bulk(entry.event.encode()),
                    b"$%d\r\n%s\r\n" % (len(data), data),
                )
            elif op.kind == _FIN and entry is not None:
                keys.append(owned.fin_keys)
                nkeys += 3
                args += (_BULK_F, _bulk(b"0-%d" % entry.seq), _bulk(b"%d" % entry.seq))
            elif op.kind == _META and op.meta is not None:
                keys.append(_bulk(self._key(gen, "meta").encode()))
                nkeys += 1
                args += (_BULK_M, _bulk(b"%d" % len(op.meta)))
                for field, value in op.meta.items():
                    args += (_bulk(field.encode()), _bulk(str(value).encode()))
            else:
                continue
            records.append(op)
        if not records:
            return
        head = [_bulk(b"EVALSHA"), self._batch_sha, _bulk(b"%d" % nkeys)]
        packed = b"*%d\r\n%s%s%s" % (
            3 + nkeys + len(args),
            b"".join(head),
            b"".join(keys),
            b"".join(args),
        )
        refused = await self._send_raw(packed)
        for i in range(0, len(refused or ()) - 1, 2):
            op = records[int(refused[i]) - 1]
            fenced = self._owned.get(op.gen) if op.gen is not None else None
            if fenced is not None:
                fenced.skip = True
            logger.warning(
                "event log: Redis refused seq %s of generation %s (%s); another writer holds "
                "this log, no more of it is written",
                op.entry.seq if op.entry is not None else "?",
                op.gen,
                refused[i + 1],
            )

    async def _send_raw(self, packed: bytes) -> Any:
        """Send one packed EVALSHA of the batch script on a pooled connection; load the script
        when Redis does not know it (NOSCRIPT: nothing ran) and send again."""
        pool = self._redis.connection_pool
        for attempt in (1, 2):
            conn = await pool.get_connection()
            try:
                await conn.send_packed_command(packed, check_health=False)
                return await conn.read_response()
            except NoScriptError:
                if attempt == 2:
                    raise
            finally:
                await pool.release(conn)
            await self._redis.script_load(_BATCH_LUA)
        return None

    async def _writer_loop(self) -> None:
        backoff = 0.05
        refusals = 0  # consecutive batches refused by Redis (not connection errors)
        while not self._closing:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._queue) < self._flush_batch and not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._flush_interval)
            self._full.clear()
            ops = self._take_batch()
            if not ops:
                continue
            try:
                await self._write_batch(ops)
            except asyncio.CancelledError:
                self._queue.extendleft(reversed(ops))
                raise
            except _DOWN_ERRORS as exc:
                refusals = refusals + 1 if isinstance(exc, ResponseError) else 0
                if refusals >= 3:  # refused, not unreachable: retrying would not help
                    logger.error("event log: Redis refused a write batch (%s); dropped", exc)
                    refusals = 0
                    for op in ops:
                        op.resolve()
                    continue
                for op in ops:
                    op.retried = True
                self._queue.extendleft(reversed(ops))
                self.writer_ok = False
                self._warn("writer", "event log: Redis write failed (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if not self.writer_ok:
                logger.info("event log: Redis writes resumed")
            self.writer_ok = True
            backoff = 0.05
            refusals = 0
            for op in ops:
                op.resolve()

    # -- readers -------------------------------------------------------------------------------

    async def state(self, gen_id: uuid.UUID) -> LogState | None:
        local = self._local.get(gen_id)
        if local is not None:
            return local.state()
        mirror = self._mirrors.get(gen_id)
        if mirror is not None and mirror.log.finished:
            return mirror.log.state()
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(self._key(gen_id, "meta"), ["status", "last_seq"])
            pipe.xrevrange(self._key(gen_id, "events"), count=1)
            (status, meta_last), top = await pipe.execute()
        except _DOWN_ERRORS as exc:
            raise LogUnavailableError(str(exc)) from exc
        if status is None:
            return None
        entries = _parse_entries(top)
        last = entries[0].seq if entries else 0
        finished = status == "finished"
        if finished and meta_last and str(meta_last).isdigit():
            last = int(meta_last)
        return LogState(last, finished)

    def follow(self, gen_id: uuid.UUID, after: int) -> AsyncIterator[Entry]:
        local = self._local.get(gen_id)
        if local is not None:
            return local.follower(after, gen_id)
        mirror = self._mirrors.get(gen_id)
        if mirror is None:
            mirror = _Mirror(
                gen_id, self._key(gen_id, "events"), self._key(gen_id, "meta"), self.max_events
            )
            self._mirrors[gen_id] = mirror
            self._to_load.append(mirror)
            self._load_wake.set()
        return _RemoteFollower(self, mirror, after)

    def _drop_mirror(self, mirror: _Mirror) -> None:
        mirror.tailing = False
        if self._mirrors.get(mirror.gen) is mirror:
            del self._mirrors[mirror.gen]
        if not mirror.ready.done():
            mirror.ready.cancel()

    def _forget_mirror(self, mirror: _Mirror, exc: BaseException) -> None:
        if self._mirrors.get(mirror.gen) is mirror:
            del self._mirrors[mirror.gen]
        if not mirror.ready.done():
            mirror.ready.set_exception(exc)

    async def _loader_loop(self) -> None:
        """Catch-up of newly followed remote logs: one pipeline (EXISTS meta + XRANGE) for
        every log waiting, on one pooled connection; then the tailer takes them over."""
        while not self._closing:
            if not self._to_load:
                self._load_wake.clear()
                await self._load_wake.wait()
                continue
            batch: list[_Mirror] = []
            while self._to_load and len(batch) < 256:
                mirror = self._to_load.popleft()
                if not mirror.ready.done():
                    batch.append(mirror)
            if not batch:
                continue
            try:
                pipe = self._redis.pipeline(transaction=False)
                for mirror in batch:
                    pipe.exists(mirror.meta_key)
                    pipe.xrange(mirror.key, "-", "+", count=self._cap + 1)
                results = await pipe.execute()
            except _DOWN_ERRORS as exc:
                self._warn("load", "event log: Redis read failed (%s)", exc)
                for mirror in batch:
                    self._forget_mirror(mirror, LogUnavailableError(str(exc)))
                continue
            for i, mirror in enumerate(batch):
                exists, items = results[2 * i], results[2 * i + 1]
                if mirror.ready.done():
                    continue  # every reader left meanwhile
                if not exists:
                    self._forget_mirror(mirror, KeyError(mirror.gen))
                    continue
                highest = mirror.log.offer(_parse_entries(items))
                mirror.read_from = max(mirror.read_from, highest)
                if not mirror.log.finished:
                    # The rest (if the range was capped) comes with the tailer's next XREAD.
                    mirror.tailing = True
                    self._tail_wake.set()
                    self._check_gap(mirror)
                mirror.ready.set_result(None)

    def _check_gap(self, mirror: _Mirror) -> None:
        if mirror.read_from > mirror.log.last_seq and not mirror.log.finished:
            self._warn(
                f"gap:{mirror.gen}",
                "event log: generation %s has a gap after seq %s (stream reaches %s); "
                "its readers wait before it",
                mirror.gen,
                mirror.log.last_seq,
                mirror.read_from,
            )

    async def _tail_loop(self) -> None:
        """One XREAD over every followed remote log, on the tailer's one connection."""
        pool = self._tail_redis.connection_pool
        conn = None
        head = _XREAD_HEAD + [
            _bulk(b"%d" % self._tail_count),
            _bulk(b"BLOCK"),
            _bulk(b"%d" % self._tail_block_ms),
            _bulk(b"STREAMS"),
        ]
        backoff = 0.1
        try:
            while not self._closing:
                tailing = {m.key: m for m in self._mirrors.values() if m.tailing}
                if not tailing:
                    self._tail_wake.clear()
                    await self._tail_wake.wait()
                    continue
                mirrors = tailing.values()
                parts = head + [m.packed_key for m in mirrors]
                parts += [_bulk(b"0-%d" % m.read_from) for m in mirrors]
                started = time.monotonic()
                try:
                    if conn is None:
                        conn = await pool.get_connection()
                    await conn.send_packed_command(_pack(parts), check_health=False)
                    response = await conn.read_response()
                except _DOWN_ERRORS as exc:
                    self._warn("tail", "event log: Redis read failed (%s); retrying", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.1
                for key, items in response or ():
                    mirror = tailing.get(key)
                    if mirror is None:
                        continue
                    highest = mirror.log.offer(_parse_raw_entries(items))
                    mirror.read_from = max(mirror.read_from, highest)
                    if mirror.log.finished:
                        mirror.tailing = False
                    else:
                        self._check_gap(mirror)
                if response:
                    # Entries keep coming: let the next ones gather (like the writer's 20 ms)
                    # rather than spin one XREAD over every followed key per new entry.
                    pause = self._tail_interval - (time.monotonic() - started)
                    if pause > 0:
                        await asyncio.sleep(pause)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.disconnect()
                    await pool.release(conn)

    # -- stop ----------------------------------------------------------------------------------

    def set_stop_handler(self, handler: StopHandler) -> None:
        self._local.set_stop_handler(handler)

    async def request_stop(self, gen_id: uuid.UUID, last_index: int | None) -> None:
        local = self._local.get(gen_id)
        if local is not None:
            self._local.deliver_stop(gen_id, last_index, once=False)
            return
        try:
            await self._redis.set(
                self._key(gen_id, "stop"), json.dumps({"last_index": last_index}), px=self._ttl_ms
            )
            await self._redis.publish(
                self.control_channel, json.dumps({"stop": str(gen_id), "last_index": last_index})
            )
        except _DOWN_ERRORS as exc:
            raise LogUnavailableError(str(exc)) from exc

    def _on_control(self, data: Any) -> None:
        try:
            message = json.loads(data)
            gen_id = uuid.UUID(str(message["stop"]))
            last_index = message.get("last_index")
        except (ValueError, TypeError, KeyError):
            logger.warning("event log: ignoring a malformed control message %r", data)
            return
        if last_index is not None and not isinstance(last_index, int):
            last_index = None
        self._local.deliver_stop(gen_id, last_index, once=True)

    async def _control_loop(self) -> None:
        backoff = 0.1
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.control_channel)
                if not self.control_ok:
                    self.control_ok = True
                    self._poll_now.set()  # messages may have been lost meanwhile
                backoff = 0.1
                while not self._closing:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_control(message.get("data"))
            except _DOWN_ERRORS as exc:
                self.control_ok = False
                self._warn(
                    "control",
                    "event log: stop channel lost (%s); reconnecting, stop keys still polled",
                    exc,
                    level=logging.ERROR,
                )
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _poll_loop(self) -> None:
        """Every second: the stop keys of the running generations owned here (one pipeline);
        every few seconds: whether the remote logs being tailed still exist."""
        next_vanish_check = time.monotonic() + self._vanish_check_interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), self._stop_poll_interval)
            self._poll_now.clear()
            try:
                await self._poll_stops()
                if time.monotonic() >= next_vanish_check:
                    next_vanish_check = time.monotonic() + self._vanish_check_interval
                    await self._check_vanished()
            except _DOWN_ERRORS as exc:
                self._warn("poll", "event log: stop poll failed (%s)", exc)

    async def _poll_stops(self) -> None:
        gens = self._local.stoppable_ids()
        if not gens:
            return
        values = await self._redis.mget([self._key(gen, "stop") for gen in gens])
        for gen, raw in zip(gens, values, strict=True):
            if raw is None:
                continue
            try:
                last_index = json.loads(raw).get("last_index")
            except (ValueError, AttributeError):
                last_index = None
            if last_index is not None and not isinstance(last_index, int):
                last_index = None
            self._local.deliver_stop(gen, last_index, once=True)

    async def _check_vanished(self) -> None:
        mirrors = [m for m in self._mirrors.values() if m.tailing]
        if not mirrors:
            return
        pipe = self._redis.pipeline(transaction=False)
        for mirror in mirrors:
            pipe.exists(mirror.meta_key)
        for mirror, exists in zip(mirrors, await pipe.execute(), strict=True):
            if not exists and not mirror.log.finished:
                mirror.tailing = False
                mirror.log.mark_gone()
