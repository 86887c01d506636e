"""Moving-window rate limits (SPEC section 9) with the `limits` library: in-process by
default, shared through Redis when ALICE_REDIS_URL is set, failing open when Redis is down."""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from alice.core.config import Settings

log = logging.getLogger("alice.ratelimit")

_WARN_EVERY_SECONDS = 10.0
# After a failure the storage is left alone this long (requests are served without limits at
# once) before one request tries it again: a Redis that swallows packets costs one request
# a timeout per interval, not every request.
RETRY_STORAGE_AFTER_SECONDS = 1.0


@lru_cache(maxsize=4096)
def limit_key(address: str) -> str:
    """A client address as every limit keys it (SPEC section 9): an IPv4-mapped IPv6 address
    counts as its IPv4 address (`::ffff:10.6.6.6` and `::ffff:a06:606` are `10.6.6.6`), an
    IPv6 address as its /64 (one subscriber's network: a client that owns a /64 cannot get
    a fresh bucket per address), any other spelling of an address in its canonical form.
    What is not an address at all (a test client's name) is kept as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        network = ipaddress.IPv6Network((int(ip) >> 64 << 64, 64))
        return str(network)
    return str(ip)


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when the oldest counted request leaves the window

    def headers(self) -> dict[str, str]:
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.reset_at - time.time())))
        return out


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.shared = settings.redis_url is not None
        storage: Storage
        if settings.redis_url:
            uri = (
                "async+" + settings.redis_url
                if "+" not in settings.redis_url
                else settings.redis_url
            )
            storage = RedisStorage(
                uri,
                implementation="redispy",
                key_prefix=f"{settings.redis_prefix}:limits",
                wrap_exceptions=True,
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
            )
        else:
            storage = MemoryStorage()
        self._storage = storage
        self._strategy = MovingWindowRateLimiter(storage)
        self.storage_ok = True
        self._last_warning = 0.0
        self._skip_until = 0.0

    @staticmethod
    def parse(limit: str) -> RateLimitItem:
        return parse(limit)

    async def hit(self, item: RateLimitItem, *key: str) -> RateLimitResult | None:
        """Count one request; None when limits are off or the storage cannot be reached."""
        if not self.enabled:
            return None
        if self._skip_until and time.monotonic() < self._skip_until:
            return None  # failed moments ago: fail open without waiting on it again
        try:
            allowed = await self._strategy.hit(item, *key)
            stats = await self._strategy.get_window_stats(item, *key)
        except (StorageError, OSError, TimeoutError) as exc:
            self._storage_failed(exc)
            return None
        self.storage_ok = True
        self._skip_until = 0.0
        return RateLimitResult(allowed, item.amount, stats.remaining, stats.reset_time)

    async def ping(self) -> bool:
        try:
            ok = bool(await self._storage.check())
        except (StorageError, OSError, TimeoutError):
            ok = False
        self.storage_ok = ok
        if ok:
            self._skip_until = 0.0
        return ok

    async def reset(self) -> None:
        await self._storage.reset()

    def _storage_failed(self, exc: BaseException) -> None:
        self.storage_ok = False
        now = time.monotonic()
        self._skip_until = now + RETRY_STORAGE_AFTER_SECONDS
        if now - self._last_warning >= _WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning("rate-limit storage unreachable, serving without limits: %r", exc)
