"""The refresh token in a cookie, for the browser page (SPEC section 13).

A request with `X-Token-Transport: cookie` to register, login, refresh or password/reset gets
its refresh token as the cookie `alice_refresh` (HttpOnly: no script reads it; SameSite=Strict
and Path=/api/v1/auth: sent to the auth routes only, never from another site; Secure unless
ALICE_ENV=development) and `"refresh_token": null` in the body. refresh and logout read the
cookie only when that header is present: a cross-site form cannot set a header, so it cannot
make the browser spend the cookie."""

from __future__ import annotations

from fastapi import Request, Response

from alice.core.config import Settings

COOKIE = "alice_refresh"
COOKIE_PATH = "/api/v1/auth"
TRANSPORT_HEADER = "X-Token-Transport"


def wants_cookie(request: Request) -> bool:
    return request.headers.get(TRANSPORT_HEADER, "").strip().lower() == "cookie"


def refresh_cookie(request: Request) -> str | None:
    """The refresh token from the cookie, when the request asked for the cookie transport."""
    if not wants_cookie(request):
        return None
    return request.cookies.get(COOKIE) or None


def set_refresh_cookie(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(settings.refresh_token_days * 86400),
        path=COOKIE_PATH,
        secure=settings.env != "development",
        httponly=True,
        samesite="strict",
    )


def clear_refresh_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        secure=settings.env != "development",
        httponly=True,
        samesite="strict",
    )
