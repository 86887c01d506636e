"""Counted slots: at most `limit` held at once per key, in this process or across processes.

A slot is held while something lasts (an open stream, a running reply) and released however
that ends. One `Slots` per process, shared by every kind of slot; each use names its own kind:

    slot = await services.slots.acquire("streams", str(user_id), limit=20)
    if slot is None:
        ...  # all `limit` slots of this user are taken: refuse
    try:
        ...
    finally:
        await slot.release()  # idempotent; safe to call from a cancelled task

- In process (no Redis): a counter per (kind, key).
- With Redis: a sorted set per (kind, key), ``<prefix>:slots:<kind>:<key>``, one member per
  held slot, scored with the time its lease expires (Redis server time, so the clocks of the
  processes do not matter). Taking a slot is one script (drop the expired members, count, add),
  so two processes racing for the last slot cannot both win. Each process renews the leases it
  holds every third of `lease_seconds`; a process that dies without releasing frees its slots
  when their leases expire, at most `lease_seconds` later. When Redis cannot be reached,
  `acquire` raises :class:`SlotsUnavailableError` and the caller decides (the stream cap
  fails open, as the rate limits do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from typing import Protocol

log = logging.getLogger("alice.slots")

DEFAULT_LEASE_SECONDS = 30.0


class SlotsUnavailableError(Exception):
    """The shared slot store (Redis) cannot be reached."""


class Slot(Protocol):
    async def release(self) -> None:
        """Give the slot back. Idempotent; completes even when the calling task is cancelled."""


class Slots(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire(self, kind: str, key: str, limit: int) -> Slot | None:
        """A slot of (kind, key) if fewer than `limit` are held, else None."""

    async def held(self, kind: str, key: str) -> int:
        """How many slots of (kind, key) are held now (over every process)."""


class _NoSlot:
    """A slot that counts nowhere: what a caller that fails open holds."""

    async def release(self) -> None:
        return None


UNCOUNTED: Slot = _NoSlot()


# --- in process ---------------------------------------------------------------------------


class _MemorySlot:
    __slots__ = ("_owner", "_id", "_released")

    def __init__(self, owner: MemorySlots, slot_id: tuple[str, str]) -> None:
        self._owner = owner
        self._id = slot_id
        self._released = False

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._give_back(self._id)


class MemorySlots:
    """Slots counted in this process only (the embedded default: one process serves)."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], int] = defaultdict(int)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def acquire(self, kind: str, key: str, limit: int) -> Slot | None:
        slot_id = (kind, key)
        if self._held[slot_id] >= limit:
            return None
        self._held[slot_id] += 1
        return _MemorySlot(self, slot_id)

    async def held(self, kind: str, key: str) -> int:
        return self._held.get((kind, key), 0)

    def _give_back(self, slot_id: tuple[str, str]) -> None:
        left = self._held[slot_id] - 1
        if left > 0:
            self._held[slot_id] = left
        else:
            self._held.pop(slot_id, None)


# --- across processes, in Redis -------------------------------------------------------------

# KEYS[1] the set; ARGV[1] member, ARGV[2] limit, ARGV[3] lease ms. 1 = taken, 0 = full.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] the set; ARGV[1] lease ms, ARGV[2..] members this process holds in it. A member whose
# lease ran out while Redis was unreachable is added back: it is still held.
_RENEW_LUA = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], until_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

_HELD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""


class _RedisSlot:
    __slots__ = ("_owner", "_key", "_member", "_released")

    def __init__(self, owner: RedisSlots, key: str, member: str) -> None:
        self._owner = owner
        self._key = key
        self._member = member
        self._released = False

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        # Forgotten here at once (no more renewals); the removal in Redis is shielded, so a
        # cancelled caller (a client gone, a shutdown) still frees the slot.
        self._owner._forget(self._key, self._member)
        with contextlib.suppress(Exception):
            await asyncio.shield(self._owner._remove(self._key, self._member))


class RedisSlots:
    """Slots counted in Redis, shared by every process, held under leases this process renews."""

    def __init__(
        self, redis_url: str, prefix: str, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(
            redis_url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=30
        )
        self._prefix = f"{prefix}:slots"
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._renew_every = lease_seconds / 3
        self._process = uuid.uuid4().hex[:16]
        self._acquire = self._redis.register_script(_ACQUIRE_LUA)
        self._renew = self._redis.register_script(_RENEW_LUA)
        self._count = self._redis.register_script(_HELD_LUA)
        self._mine: dict[str, set[str]] = defaultdict(set)
        self._renewer: asyncio.Task[None] | None = None
        self._cleanups: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever(), name="alice-slot-leases")

    async def close(self) -> None:
        """Stop renewing and give back every slot still held (best effort: leases expire)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        with contextlib.suppress(Exception):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, members in self._mine.items():
                    if members:
                        pipe.zrem(key, *members)
                await pipe.execute()
        self._mine.clear()
        await self._redis.aclose()

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}:{kind}:{key}"

    async def acquire(self, kind: str, key: str, limit: int) -> Slot | None:
        redis_key = self._key(kind, key)
        member = f"{self._process}:{uuid.uuid4().hex[:12]}"
        # Counted as ours before the answer: a renewal racing the script keeps it alive.
        self._mine[redis_key].add(member)
        try:
            taken = await self._acquire(keys=[redis_key], args=[member, limit, self._lease_ms])
        except (Exception, asyncio.CancelledError) as exc:
            # The script may have run (a reply lost, a cancelled wait): take the member back
            # out in the background, best effort (else its unrenewed lease frees it).
            self._forget(redis_key, member)
            cleanup = asyncio.get_running_loop().create_task(self._remove(redis_key, member))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise SlotsUnavailableError(repr(exc)) from exc
        if not taken:
            self._forget(redis_key, member)
            return None
        return _RedisSlot(self, redis_key, member)

    async def held(self, kind: str, key: str) -> int:
        try:
            return int(await self._count(keys=[self._key(kind, key)]))
        except Exception as exc:
            raise SlotsUnavailableError(repr(exc)) from exc

    def _forget(self, key: str, member: str) -> None:
        members = self._mine.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del self._mine[key]

    async def _remove(self, key: str, member: str) -> None:
        with contextlib.suppress(Exception):
            await self._redis.zrem(key, member)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                await self.renew()
            except Exception as exc:  # noqa: BLE001 - Redis down: leases may lapse, retried
                log.warning("could not renew slot leases: %r", exc)

    async def renew(self) -> None:
        """Push out the lease of every slot this process holds (done every lease / 3)."""
        held = [(key, list(members)) for key, members in self._mine.items() if members]
        if not held:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, members in held:
                await self._renew(keys=[key], args=[self._lease_ms, *members], client=pipe)
            await pipe.execute()


def make_slots(redis_url: str | None, prefix: str) -> Slots:
    """Slots in Redis when it is configured (counted over every process), else in process."""
    if redis_url:
        return RedisSlots(redis_url, prefix)
    return MemorySlots()
