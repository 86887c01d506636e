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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from alice.core.config import Settings
from alice.core.errors import InvalidTokenError

ALGORITHM = "HS256"
ISSUER = "alice"
ACCESS_AUDIENCE = "alice:access"
REFRESH_AUDIENCE = "alice:refresh"
ACCESS_TYP = "at+jwt"
REFRESH_TYP = "rt+jwt"
_REQUIRED = ["exp", "iat", "sub", "jti", "iss", "aud", "type"]
_VERIFIED_CACHE_SIZE = 10_000
_HASH_THREAD_NICE = 10


class PasswordHashing:
    """Argon2id hashing run in worker threads, at most `max_concurrent` at once (each
    costs `memory_kib` of RAM), with a dummy hash so unknown users cost a real verify."""

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
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when the password matches; with no hash, verifies against the dummy and fails."""
        target = password_hash or self._dummy_hash
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, self._verify, target, password)
        return ok and password_hash is not None

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

    def make_access(self, user_id: uuid.UUID, version: int, now: datetime) -> str:
        claims = {
            "iss": ISSUER,
            "aud": ACCESS_AUDIENCE,
            "sub": str(user_id),
            "type": "access",
            "iat": int(now.timestamp()),
            "exp": int((now + self.access_ttl).timestamp()),
            "jti": uuid.uuid4().hex,
            "ver": version,
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
        decoded = self._decode(token, ACCESS_AUDIENCE, ACCESS_TYP, "access", ["ver"])
        ver = decoded["ver"]
        if not isinstance(ver, int) or isinstance(ver, bool):
            raise InvalidTokenError()
        claims = AccessClaims(_uuid(decoded["sub"]), ver, decoded["jti"])
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
    return hashlib.sha256(token.encode()).digest()


def utcnow() -> datetime:
    return datetime.now(UTC)
