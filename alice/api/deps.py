"""Dependencies shared by the routers: services, the current user, rate limits.

They run on nearly every request, and FastAPI's solving of each dependency costs ~20 µs (as
much as a read of the user), so an authenticated route has one: the user, checked and counted
against the route's own per-user limit. The services come from the request itself."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from limits import RateLimitItem

from alice.api.cookies import wants_cookie
from alice.core.errors import AliceError, ErrorCode, RateLimitExceededError, UnauthorizedError
from alice.core.ratelimit import RateLimiter, limit_key
from alice.services.auth import ClientInfo, CurrentUser
from alice.services.container import Services
from alice.services.replies import PriorSend
from alice.services.slots import UNCOUNTED, Slot, SlotsUnavailableError

_BEARER_DESCRIPTION = "An access token from login or register."


async def get_services(request: Request) -> Services:
    # async: a plain `def` dependency would cost a thread-pool hop on every request.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


class _AuthenticatedUser(HTTPBearer):
    """The user the request's bearer token acts for (SPEC section 4), counted against the
    route's per-user rate limit. An HTTPBearer itself, so OpenAPI shows the scheme."""

    # What every route using it can answer (OpenAPI, `alice.api.openapi`).
    openapi_codes = (
        ErrorCode.UNAUTHORIZED,
        ErrorCode.INVALID_TOKEN,
        ErrorCode.ACCOUNT_DISABLED,
        ErrorCode.RATE_LIMIT_EXCEEDED,
        ErrorCode.DATABASE_UNAVAILABLE,
    )

    def __init__(self, name: str, limit: str) -> None:
        super().__init__(
            auto_error=False, scheme_name="HTTPBearer", description=_BEARER_DESCRIPTION
        )
        self._name = name
        self._item = RateLimiter.parse(limit)

    async def __call__(self, request: Request) -> CurrentUser:  # type: ignore[override]
        return await self._user(request)

    async def _user(self, request: Request) -> CurrentUser:
        """The user, counted against the route's limit."""
        services, user = await self._authenticate(request)
        if services.limiter.enabled:
            await _count(request, services, self._item, self._name, str(user.id))
        return user

    async def _authenticate(self, request: Request) -> tuple[Services, CurrentUser]:
        services: Services = request.app.state.services
        credentials = await HTTPBearer.__call__(self, request)
        try:
            if credentials is None or not credentials.credentials:
                raise UnauthorizedError(headers={"WWW-Authenticate": "Bearer"})
            user = await services.auth.authenticate(credentials.credentials)
        except AliceError as exc:
            if exc.status_code == 401:
                await count_unauthorized(request, services)
            raise
        request.state.user_id = user.id
        return services, user


def authenticated(name: str, limit: str) -> Any:
    """The current user, for a route limited to `limit` requests per user under `name`:
    `user: Annotated[CurrentUser, authenticated("me", "60/minute")]`."""
    return Depends(_AuthenticatedUser(name, limit))


# --- open streams per user (SPEC section 11) --------------------------------------------------

STREAM_SLOTS = "streams"
_slot_log = logging.getLogger("alice.slots")
_last_slot_warning = 0.0


class _StreamingUser(_AuthenticatedUser):
    """The current user of a route that may answer with a stream: one of the user's
    ALICE_USER_MAX_STREAMS slots is held from before the route runs until its response has
    ended, however it ends (done, error, the client gone), and a user holding them all is
    refused (429, `Retry-After: 1`). A dependency with `yield`: FastAPI runs its exit after
    the response is sent, so a stream's slot is held exactly as long as the stream."""

    async def __call__(self, request: Request) -> AsyncIterator[CurrentUser]:  # type: ignore[override]
        user = await self._user(request)
        slot = await _take_stream_slot(request.app.state.services, str(user.id))
        try:
            yield user
        finally:
            await slot.release()


def authenticated_stream(name: str, limit: str) -> Any:
    """As `authenticated`, for a route that answers with a stream (counted in the user's
    open streams while it lasts)."""
    return Depends(_StreamingUser(name, limit))


class _MessageSender(_StreamingUser):
    """The user of `POST /chat/message` and what the request refers to that was sent before
    (SPEC 6): counted in the message limit, or, when it is a re-attach (its `Last-Event-ID`
    names one of the user's replies, or its `Idempotency-Key` one of the user's sends), in
    the re-attach limit of `GET …/stream`. It holds a stream slot as `_StreamingUser`."""

    def __init__(self, name: str, limit: str, reattach_name: str, reattach_limit: str) -> None:
        super().__init__(name, limit)
        self._reattach_name = reattach_name
        self._reattach_item = RateLimiter.parse(reattach_limit)

    async def __call__(self, request: Request) -> AsyncIterator[Sender]:  # type: ignore[override]
        services, user = await self._authenticate(request)
        headers = request.headers
        last_event_id, key = headers.get("last-event-id"), headers.get("idempotency-key")
        prior = PriorSend()
        if last_event_id or key:
            prior = await services.replies.prior_send(user.id, last_event_id, key)
        if services.limiter.enabled:
            item, name = self._item, self._name
            if prior.is_reattach:
                item, name = self._reattach_item, self._reattach_name
            await _count(request, services, item, name, str(user.id))
        slot = await _take_stream_slot(services, str(user.id))
        try:
            yield Sender(user, prior)
        finally:
            await slot.release()


@dataclass(frozen=True, slots=True)
class Sender:
    user: CurrentUser
    prior: PriorSend


def message_sender(name: str, limit: str, reattach_name: str, reattach_limit: str) -> Any:
    """The `Sender` of `POST /chat/message`: the user, what the request re-attaches to (if
    anything), counted under `name`/`limit`, or `reattach_name`/`reattach_limit` for a
    re-attach."""
    return Depends(_MessageSender(name, limit, reattach_name, reattach_limit))


async def _take_stream_slot(services: Services, user_id: str) -> Slot:
    if not services.limiter.enabled:
        return UNCOUNTED  # off with the other request limits (SPEC section 11)
    try:
        slot = await services.slots.acquire(
            STREAM_SLOTS, user_id, services.settings.user_max_streams
        )
    except SlotsUnavailableError as exc:
        # As the rate limits: Redis down, the request is served (fail open) with a warning.
        global _last_slot_warning
        now = time.monotonic()
        if now - _last_slot_warning > 10:
            _last_slot_warning = now
            _slot_log.warning("stream slots unreachable, serving without the cap: %s", exc)
        return UNCOUNTED
    if slot is None:
        raise RateLimitExceededError(
            "Too many open streams for this user.", headers={"Retry-After": "1"}
        )
    return slot


def client_ip(request: Request) -> str:
    """The client's full address (what a session records). Limits key it with `limit_key`."""
    # X-Forwarded-For is applied (for trusted proxies only) by the proxy-headers middleware,
    # which rewrites the peer address; app code never parses the header itself.
    return request.client.host if request.client else "unknown"


class _ByClientIP:
    openapi_codes = (ErrorCode.RATE_LIMIT_EXCEEDED,)

    def __init__(self, name: str, limit: str) -> None:
        self._name = name
        self._item = RateLimiter.parse(limit)

    async def __call__(self, request: Request) -> None:
        services = request.app.state.services
        key = limit_key(client_ip(request))
        await _count(request, services, self._item, self._name, key)


class _UserOrCookie(_AuthenticatedUser):
    """As `authenticated`, but None (not 401) for a request without bearer credentials that
    asks for the cookie transport (SPEC section 13): the route then reads the cookie."""

    async def __call__(self, request: Request) -> CurrentUser | None:  # type: ignore[override]
        if "authorization" not in request.headers and wants_cookie(request):
            return None
        return await super().__call__(request)


def user_or_cookie(name: str, limit: str) -> Any:
    return Depends(_UserOrCookie(name, limit))


async def count_for_user(request: Request, name: str, limit: str, user_id: object) -> None:
    """Count a request against a per-user limit once its user is known another way."""
    services: Services = request.app.state.services
    if services.limiter.enabled:
        await _count(request, services, RateLimiter.parse(limit), name, str(user_id))


def client_info(request: Request) -> ClientInfo:
    """The client a new session is recorded with: its full IP and its user agent."""
    return ClientInfo(ip=client_ip(request), user_agent=request.headers.get("user-agent"))


def rate_limit(name: str, limit: str) -> Any:
    """A dependency counting each request against `limit` for its client IP (routes without
    a user; those with one count in `authenticated`)."""
    return Depends(_ByClientIP(name, limit))


# Requests refused with 401 on a protected route, per client IP (SPEC section 9): token
# guessing, and the log lines it makes, are bounded. Past the limit the refusal is a 429.
UNAUTHORIZED_LIMIT = RateLimiter.parse("60/minute")


async def count_unauthorized(request: Request, services: Services) -> None:
    """Count a 401 about to be answered; raise 429 instead once the address is past 60/min."""
    if services.limiter.enabled:
        key = limit_key(client_ip(request))
        await _count(request, services, UNAUTHORIZED_LIMIT, "unauthorized", key)


class MetricsToken:
    """With ALICE_METRICS_TOKEN set, `/metrics` needs `Authorization: Bearer <that token>`
    (compared in constant time); else 401, counted with the other 401s of its address."""

    openapi_codes = (ErrorCode.UNAUTHORIZED, ErrorCode.RATE_LIMIT_EXCEEDED)

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def __call__(self, request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return
        await count_unauthorized(request, request.app.state.services)
        raise UnauthorizedError(headers={"WWW-Authenticate": "Bearer"})


async def _count(
    request: Request, services: Services, item: RateLimitItem, name: str, key: str
) -> None:
    result = await services.limiter.hit(item, name, key)
    if result is None:
        return
    request.state.ratelimit_headers = result.headers()
    if not result.allowed:
        raise RateLimitExceededError()  # its headers ride on request.state (middleware)
