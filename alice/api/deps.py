"""Dependencies shared by the routers: services, the current user, rate limits."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from alice.core.errors import RateLimitExceededError, UnauthorizedError
from alice.core.ratelimit import RateLimiter
from alice.services.auth import CurrentUser as CurrentUserData
from alice.services.container import Services

_bearer = HTTPBearer(auto_error=False, description="An access token from login or register.")


async def get_services(request: Request) -> Services:
    # async: a plain `def` dependency would cost a thread-pool hop on every request.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


# The dependencies below run on nearly every request; each sub-dependency FastAPI has to solve
# costs more than reading `app.state`, so they take the services from the request.


async def get_current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> CurrentUserData:
    if credentials is None or not credentials.credentials:
        raise UnauthorizedError(headers={"WWW-Authenticate": "Bearer"})
    services: Services = request.app.state.services
    user = await services.auth.authenticate(credentials.credentials)
    request.state.user_id = user.id
    return user


CurrentUser = Annotated[CurrentUserData, Depends(get_current_user)]


def client_ip(request: Request) -> str:
    # X-Forwarded-For is applied (for trusted proxies only) by the proxy-headers middleware,
    # which rewrites the peer address; app code never parses the header itself.
    return request.client.host if request.client else "unknown"


def rate_limit(name: str, limit: str, per: Literal["ip", "user"]) -> Any:
    """A dependency counting each request against `limit` for its client IP or user."""
    item = RateLimiter.parse(limit)

    async def _apply(request: Request, key: str) -> None:
        services: Services = request.app.state.services
        result = await services.limiter.hit(item, name, key)
        if result is None:
            return
        headers = result.headers()
        request.state.ratelimit_headers = headers
        if not result.allowed:
            raise RateLimitExceededError()  # its headers ride on request.state (middleware)

    if per == "ip":

        async def by_ip(request: Request) -> None:
            await _apply(request, client_ip(request))

        return Depends(by_ip)

    async def by_user(request: Request, user: CurrentUser) -> None:
        await _apply(request, str(user.id))

    return Depends(by_user)
