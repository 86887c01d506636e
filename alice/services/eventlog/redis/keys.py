"""What every part of the Redis event log shares: key names, the errors that mean "Redis
cannot be reached", and a rate-limited warning."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from redis.exceptions import RedisError

logger = logging.getLogger("alice.services.eventlog.redis")

# Errors that mean "Redis cannot be reached" (or answered garbage), as opposed to a refusal.
DOWN_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class Keys:
    """`<prefix>{<gen>}:<part>`: hash-tagged by reply, so one reply's keys stay together."""

    __slots__ = ("prefix", "control")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.control = f"{prefix}control"

    def events(self, gen_id: uuid.UUID) -> str:
        return f"{self.prefix}{{{gen_id}}}:events"

    def meta(self, gen_id: uuid.UUID) -> str:
        return f"{self.prefix}{{{gen_id}}}:meta"

    def stop(self, gen_id: uuid.UUID) -> str:
        return f"{self.prefix}{{{gen_id}}}:stop"


Warner = Callable[..., None]


def warner(every: float = 10.0) -> Warner:
    """A logger call that says one thing (keyed by `what`) at most once per `every` seconds."""
    last: dict[str, float] = {}

    def warn(what: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        if now - last.get(what, -1e9) >= every:
            last[what] = now
            logger.log(level, msg, *args)

    return warn
