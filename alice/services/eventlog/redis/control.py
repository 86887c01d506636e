"""Stop requests across processes: the control side of the Redis event log.

A stop for a reply generated elsewhere sets the durable key `…:stop` and publishes on the
channel `<prefix>control`. Each process listens on that channel (a `get_message(timeout=1)`
loop that reconnects with backoff) and, every second, reads the stop keys of the replies it
generates (one MGET), which covers a message lost while the subscriber reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from alice.services.eventlog.base import LogUnavailableError
from alice.services.eventlog.memory import MemoryEventLog
from alice.services.eventlog.redis.keys import DOWN_ERRORS, Keys, Warner

logger = logging.getLogger("alice.services.eventlog.redis")


class Control:
    """Sends stop requests, and delivers those for replies generated here to `local`'s stop
    handler (at most once per reply)."""

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        local: MemoryEventLog,
        warn: Warner,
        *,
        ttl_ms: int,
        poll_interval: float,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._local = local
        self._warn = warn
        self._ttl_ms = ttl_ms
        self._poll_interval = poll_interval
        self._poll_now = asyncio.Event()  # read the stop keys now (after a resubscribe)
        self.ok = False

    async def request_stop(self, gen_id: uuid.UUID, last_index: int | None) -> None:
        """Ask the owner of a reply generated elsewhere to stop it."""
        try:
            await self._redis.set(
                self._keys.stop(gen_id), json.dumps({"last_index": last_index}), px=self._ttl_ms
            )
            await self._redis.publish(
                self._keys.control, json.dumps({"stop": str(gen_id), "last_index": last_index})
            )
        except DOWN_ERRORS as exc:
            raise LogUnavailableError(str(exc)) from exc

    def _on_message(self, data: Any) -> None:
        try:
            message = json.loads(data)
            gen_id = uuid.UUID(str(message["stop"]))
            last_index = message.get("last_index")
        except (ValueError, TypeError, KeyError):
            logger.warning("event log: ignoring a malformed control message %r", data)
            return
        self._local.deliver_stop(gen_id, _index(last_index), once=True)

    async def listen_forever(self, closing: Callable[[], bool]) -> None:
        backoff = 0.1
        while not closing():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._keys.control)
                if not self.ok:
                    self.ok = True
                    self._poll_now.set()  # messages may have been lost meanwhile
                backoff = 0.1
                while not closing():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message.get("data"))
            except DOWN_ERRORS as exc:
                self.ok = False
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

    async def poll_forever(self, closing: Callable[[], bool]) -> None:
        """Every second: the stop keys of the running replies generated here (one MGET)."""
        while not closing():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), self._poll_interval)
            self._poll_now.clear()
            gens = self._local.stoppable_ids()
            if not gens:
                continue
            try:
                values = await self._redis.mget([self._keys.stop(gen) for gen in gens])
            except DOWN_ERRORS as exc:
                self._warn("poll", "event log: stop poll failed (%s)", exc)
                continue
            for gen, raw in zip(gens, values, strict=True):
                if raw is None:
                    continue
                try:
                    last_index = json.loads(raw).get("last_index")
                except (ValueError, AttributeError):
                    last_index = None
                self._local.deliver_stop(gen, _index(last_index), once=True)


def _index(value: Any) -> int | None:
    return value if isinstance(value, int) else None
