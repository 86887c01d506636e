"""Security primitives: Argon2id password hashing and the JWTs of SPEC section 4."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from alice.core.config import Settings
from alice.core.errors import InvalidTokenError, ServerBusyError

ALGORITHM = "HS256"
ISSUER = "alice"
ACCESS_AUDIENCE = "alice:access"
REFRESH_AUDIENCE = "alice:refresh"
ACCESS_TYP = "at+jwt"
REFRESH_TYP = "rt+jwt"
_REQUIRED = ["exp", "iat", "sub", "jti", "iss", "aud", "type"]
_VERIFIED_CACHE_SIZE = 10_000
_HASH_THREAD_NICE = 10
_R = TypeVar("_R")


class PasswordHashing:
    """Argon2id hashing run in worker threads, at most `argon2_max_concurrent` at once, with a
    dummy hash so unknown users cost a real verify.

    Each hash holds `argon2_memory_kib` (64 MiB) while it runs, so the number at once is the
    memory bound: 4 x 64 MiB = 256 MiB per process at the production cost. A request waits for
    its turn at most `argon2_max_wait_seconds` (5 s), then is refused with 503 SERVER_BUSY
    rather than queued without end: a burst of logins from many addresses (each address has
    its own 5/min) cannot pile up hashes, memory or minutes of latency."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        # Its own threads, at most `argon2_max_concurrent`, at a lower CPU priority (Argon2's
        # lanes inherit it): a burst of logins must not starve the event loop of the core.
        self._pool = ThreadPoolExecutor(
            max_workers=settings.argon2_max_concurrent,
            thread_name_prefix="alice-argon2",
            initializer=_lower_thread_priority,
        )
        # A turn is a free thread: taken before a hash is handed to the pool, given back when
        # the hash has ended in its thread (not when its request gave up waiting for it).
        self._turns = asyncio.Semaphore(settings.argon2_max_concurrent)
        self._max_wait = settings.argon2_max_wait_seconds
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        """The PHC string of `password` (503 SERVER_BUSY when no turn comes in time)."""
        return await self._in_turn(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when the password matches; with no hash, verifies against the dummy and fails."""
        target = password_hash or self._dummy_hash
        ok = await self._in_turn(self._verify, target, password)
        return ok and password_hash is not None

    async def _in_turn(self, fn: Callable[..., _R], *args: Any) -> _R:
        try:
            async with asyncio.timeout(self._max_wait):
                await self._turns.acquire()
        except TimeoutError:
            raise ServerBusyError(headers={"Retry-After": "1"}) from None
        loop = asyncio.get_running_loop()
        try:
            job = self._pool.submit(fn, *args)
        except BaseException:
            self._turns.release()
            raise
        job.add_done_callback(lambda _: _call_soon(loop, self._turns.release))
        return await asyncio.wrap_future(job)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    version: int
    jti: str
    session_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class RefreshClaims:
    user_id: uuid.UUID
    jti: uuid.UUID
    family_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class IssuedRefresh:
    token: str
    jti: uuid.UUID
    token_hash: bytes
    expires_at: datetime


class TokenCodec:
    """Makes and checks the access and refresh JWTs. Each kind has its own `typ`, `aud` and
    `type`, so one can never pass for the other; the algorithm is pinned on decode."""

    def __init__(self, settings: Settings) -> None:
        self._key = settings.signing_key()
        self._verified: dict[str, tuple[AccessClaims, float]] = {}
        self.access_ttl = timedelta(minutes=settings.access_token_minutes)
        self.refresh_ttl = timedelta(days=settings.refresh_token_days)

    def make_access(
        self, user_id: uuid.UUID, version: int, now: datetime, session_id: uuid.UUID
    ) -> str:
        claims = {
            "iss": ISSUER,
            "aud": ACCESS_AUDIENCE,
            "sub": str(user_id),
            "type": "access",
            "iat": int(now.timestamp()),
            "exp": int((now + self.access_ttl).timestamp()),
            "jti": uuid.uuid4().hex,
            "ver": version,
            "sid": str(session_id),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"typ": ACCESS_TYP})

    def make_refresh(
        self, user_id: uuid.UUID, family_id: uuid.UUID, now: datetime, family_ends: datetime
    ) -> IssuedRefresh:
        jti = uuid.uuid4()
        expires_at = min(now + self.refresh_ttl, family_ends)
        claims = {
            "iss": ISSUER,
            "aud": REFRESH_AUDIENCE,
            "sub": str(user_id),
            "type": "refresh",
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
            "jti": str(jti),
            "fam": str(family_id),
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"typ": REFRESH_TYP})
        return IssuedRefresh(token, jti, hash_token(token), expires_at)

    def read_access(self, token: str) -> AccessClaims:
        """The claims of a valid access token. A token verified once is remembered (its exact
        string, so its exact signature) until it expires: decoding costs more than the rest
        of an authenticated request. The user and version are still checked every time."""
        cached = self._verified.get(token)
        if cached is not None:
            claims, expires = cached
            if time.time() < expires:
                return claims
            del self._verified[token]
        decoded = self._decode(token, ACCESS_AUDIENCE, ACCESS_TYP, "access", ["ver", "sid"])
        ver = decoded["ver"]
        if not isinstance(ver, int) or isinstance(ver, bool):
            raise InvalidTokenError()
        claims = AccessClaims(_uuid(decoded["sub"]), ver, decoded["jti"], _uuid(decoded["sid"]))
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = (claims, float(decoded["exp"]))
        return claims

    def read_refresh(self, token: str) -> RefreshClaims:
        claims = self._decode(token, REFRESH_AUDIENCE, REFRESH_TYP, "refresh", ["fam"])
        return RefreshClaims(_uuid(claims["sub"]), _uuid(claims["jti"]), _uuid(claims["fam"]))

    def _decode(
        self, token: str, audience: str, typ: str, kind: str, extra: list[str]
    ) -> dict[str, Any]:
        try:
            decoded = jwt.api_jwt.decode_complete(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=ISSUER,
                options={"require": _REQUIRED + extra, "strict_aud": True},
            )
        except jwt.PyJWTError:
            raise InvalidTokenError() from None
        claims: dict[str, Any] = decoded["payload"]
        if decoded["header"].get("typ") != typ or claims.get("type") != kind:
            raise InvalidTokenError()
        return claims


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
        loop.call_soon_threadsafe(fn)


def _lower_thread_priority() -> None:
    # On Linux the nice value belongs to the thread, and threads it starts inherit it.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _HASH_THREAD_NICE)


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidTokenError() from None


def hash_token(token: str) -> bytes:
    # SHA-256 is enough for these tokens: each carries at least 256 random or signed bits,
    # so a slow hash would add nothing against guessing.
    return hashlib.sha256(token.encode()).digest()


def utcnow() -> datetime:
    return datetime.now(UTC)
