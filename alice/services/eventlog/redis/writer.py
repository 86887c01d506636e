"""The owner's side of the Redis event log: every write of a reply generated here.

Appends never wait for Redis: they are queued, and one writer task sends the queue every
≤ 20 ms (or at 256 entries) as ONE call of `batch.lua`, which does the XADDs in order, so a
batch costs one round trip and one reply (packed by hand: `resp.py` says why). Explicit ids
`0-<seq>` fence a second writer: Redis refuses an id that is taken, and the log then writes
no more of that reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from alice.services.eventlog.base import TERMINAL_EVENTS, Entry, LogUnavailableError
from alice.services.eventlog.redis.keys import DOWN_ERRORS, Keys, Warner
from alice.services.eventlog.redis.resp import bulk, send_script
from alice.services.eventlog.redis.scripts import register

logger = logging.getLogger("alice.services.eventlog.redis")

_X, _META, _FIN, _FLUSH = 0, 1, 2, 3
# The record kinds of batch.lua, packed.
_X_, _R, _F, _M = (bulk(kind) for kind in (b"x", b"r", b"f", b"m"))


class _Op:
    """One queued write."""

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


class Writer:
    """Queued writes of the replies this process owns, sent in batches by one task."""

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        warn: Warner,
        *,
        ttl_ms: int,
        retention_ms: int,
        cap: int,
        flush_interval: float,
        flush_batch: int,
        finish_timeout: float,
        max_pending: int,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._warn = warn
        self._batch_script, self._mark_lost_script = register(client)
        self._ttl_ms = ttl_ms
        self._retention_ms = retention_ms
        self._cap = cap
        self._flush_interval = flush_interval
        self._flush_batch = flush_batch
        self._finish_timeout = finish_timeout
        self._max_pending = max_pending
        # Replies written here; True once fenced (another writer) or over the queue limit.
        self._skip: dict[uuid.UUID, bool] = {}
        self._packed: dict[uuid.UUID, tuple[bytes, bytes, bytes]] = {}
        self._queue: deque[_Op] = deque()
        self._wake = asyncio.Event()  # something queued
        self._full = asyncio.Event()  # a batch is full, or a flush is awaited
        self.ok = True

    def fenced(self, gen_id: uuid.UUID) -> bool:
        """Whether this process writes no more of the reply (another writer holds its log)."""
        return self._skip.get(gen_id, False)

    @property
    def owned(self) -> int:
        """How many replies' logs this process writes (until their retention ends)."""
        return len(self._skip)

    def forget(self, gen_id: uuid.UUID) -> None:
        self._skip.pop(gen_id, None)
        self._packed.pop(gen_id, None)

    def _enqueue(self, op: _Op) -> None:
        self._queue.append(op)
        if len(self._queue) >= self._flush_batch:
            self._full.set()
        self._wake.set()

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    @property
    def queued(self) -> int:
        """Writes queued and not yet sent."""
        return len(self._queue)

    async def flush(self, wait_seconds: float | None = None) -> bool:
        """Wait until everything queued so far is written; False if not within the wait."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Op(_FLUSH, None, fut=fut))
        self._full.set()
        try:
            await asyncio.wait_for(asyncio.shield(fut), wait_seconds)
        except TimeoutError:
            return False
        return True

    # -- the owner's writes ----------------------------------------------------------------------

    async def create(self, gen_id: uuid.UUID, mapping: dict[str, str]) -> None:
        self._skip[gen_id] = False
        meta = self._keys.meta(gen_id)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(meta, mapping=mapping)  # type: ignore[arg-type]  # redis-py types Mapping invariantly
            pipe.pexpire(meta, self._ttl_ms)
            await pipe.execute()
        except DOWN_ERRORS as exc:
            self._warn("create", "event log: Redis unreachable at create (%s); will retry", exc)
            self._enqueue(_Op(_META, gen_id, meta=mapping))

    def append(self, gen_id: uuid.UUID, entry: Entry) -> None:
        if self._skip.get(gen_id, True):
            return
        if len(self._queue) >= self._max_pending:
            self._skip[gen_id] = True
            self._warn("pending", "event log: write queue full, generation %s not mirrored", gen_id)
            return
        self._enqueue(_Op(_X, gen_id, entry))

    async def finish(self, gen_id: uuid.UUID, entry: Entry) -> None:
        """Queue the terminal entry and the end of the log; wait (a bounded while) for them."""
        if self._skip.get(gen_id, True):
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
        """The reaper's terminal entry on a log owned by a dead process (see mark_lost.lua)."""
        if entry.event not in TERMINAL_EVENTS:
            raise ValueError(f"{entry.event!r} is not a terminal event")
        keys = [self._keys.events(gen_id), self._keys.meta(gen_id), self._keys.stop(gen_id)]
        args = [f"0-{entry.seq}", entry.event, entry.data, self._cap, entry.seq, self._retention_ms]
        try:
            written = await self._mark_lost_script(keys=keys, args=args)  # type: ignore[arg-type]
        except DOWN_ERRORS as exc:
            raise LogUnavailableError(str(exc)) from exc
        return bool(written)

    # -- the writer task --------------------------------------------------------------------------

    def _take_batch(self) -> list[_Op]:
        ops: list[_Op] = []
        xadds = 0
        queue = self._queue
        while queue and xadds < self._flush_batch:
            op = queue.popleft()
            if op.gen is not None and op.kind != _META and self._skip.get(op.gen, False):
                op.resolve()  # fenced (another writer) or over the queue limit
                continue
            if op.kind == _X:
                xadds += 1
            ops.append(op)
        return ops

    async def send_batch(self, keys: list[bytes], args: list[bytes]) -> Any:
        """One call of the batch script (keys and args packed); its reply lists the refused
        records."""
        return await send_script(self._redis, self._batch_script, keys, args)

    def _packed_keys(self, gen: uuid.UUID) -> tuple[bytes, bytes, bytes]:
        """The reply's keys (events, meta, stop) as bulk strings, packed once per reply."""
        packed = self._packed.get(gen)
        if packed is None:
            names = self._keys
            packed = (
                bulk(names.events(gen).encode()),
                bulk(names.meta(gen).encode()),
                bulk(names.stop(gen).encode()),
            )
            if gen in self._skip:  # written here: kept until its log is dropped
                self._packed[gen] = packed
        return packed

    async def _write_batch(self, ops: list[_Op]) -> None:
        keys: list[bytes] = []
        args: list[bytes] = [
            bulk(b"%d" % self._ttl_ms),
            bulk(b"%d" % self._retention_ms),
            bulk(b"%d" % self._cap),
        ]
        records: list[_Op] = []
        for op in ops:
            gen, entry = op.gen, op.entry
            if gen is None:
                continue
            if op.kind == _X and entry is not None:
                keys.append(self._packed_keys(gen)[0])
                data = entry.data.encode()
                args += (
                    _R if op.retried else _X_,
                    bulk(b"0-%d" % entry.seq),
                    bulk(entry.event.encode()),
                    b"$%d\r\n%s\r\n" % (len(data), data),
                )
            elif op.kind == _FIN and entry is not None:
                keys += self._packed_keys(gen)
                args += (_F, bulk(b"0-%d" % entry.seq), bulk(b"%d" % entry.seq))
            elif op.kind == _META and op.meta is not None:
                keys.append(self._packed_keys(gen)[1])
                args += (_M, bulk(b"%d" % len(op.meta)))
                for field, value in op.meta.items():
                    args += (bulk(field.encode()), bulk(str(value).encode()))
            else:
                continue
            records.append(op)
        if not records:
            return
        refused = await self.send_batch(keys, args)
        for i in range(0, len(refused or ()) - 1, 2):
            op = records[int(refused[i]) - 1]
            if op.gen is not None and op.gen in self._skip:
                self._skip[op.gen] = True
            logger.warning(
                "event log: Redis refused seq %s of generation %s (%s); another writer holds "
                "this log, no more of it is written",
                op.entry.seq if op.entry is not None else "?",
                op.gen,
                refused[i + 1],
            )

    async def run(self, closing: Callable[[], bool]) -> None:
        backoff = 0.05
        refusals = 0  # consecutive batches refused by Redis (not connection errors)
        while not closing():
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
            except DOWN_ERRORS as exc:
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
                self.ok = False
                self._warn("writer", "event log: Redis write failed (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if not self.ok:
                logger.info("event log: Redis writes resumed")
            self.ok = True
            backoff = 0.05
            refusals = 0
            for op in ops:
                op.resolve()
