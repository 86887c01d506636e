"""/api/v1/auth: register, login, refresh, logout, me (SPEC section 4)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response, status

from alice.api.cookies import (
    clear_refresh_cookie,
    refresh_cookie,
    set_refresh_cookie,
    wants_cookie,
)
from alice.api.deps import (
    ServicesDep,
    authenticated,
    client_info,
    count_for_user,
    rate_limit,
    user_or_cookie,
)
from alice.api.errors import responses
from alice.api.openapi import operation_id
from alice.api.responses import ModelResponse
from alice.core.errors import ErrorCode, InvalidTokenError, ValidationFailedError
from alice.schemas.auth import (
    LoginRequest,
    RefreshRequest,
    TokenResponse,
    UserCreate,
    UserResponse,
)
from alice.services.auth import CurrentUser, TokenPair

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], generate_unique_id_function=operation_id)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Beyond these, a route's error codes follow from its dependencies and parameters
# (`alice.api.openapi`): the bearer-token user, the per-IP limit, a body.


def token_response(pair: TokenPair, request: Request, response: Response) -> TokenResponse:
    """The TokenResponse of a new pair, never cached; with `X-Token-Transport: cookie` the
    refresh token goes into the `alice_refresh` cookie instead of the body."""
    response.headers.update(_NO_STORE)
    refresh: str | None = pair.refresh_token
    if wants_cookie(request):
        set_refresh_cookie(response, pair.refresh_token, request.app.state.services.settings)
        refresh = None
    return TokenResponse(
        access_token=pair.access_token, refresh_token=refresh, expires_in=pair.expires_in
    )


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenResponse,
    dependencies=[rate_limit("register", "5/minute")],
    responses=responses(
        ErrorCode.EMAIL_ALREADY_EXISTS, ErrorCode.DATABASE_UNAVAILABLE, ErrorCode.SERVER_BUSY
    ),
)
async def register(
    body: UserCreate, services: ServicesDep, request: Request, response: Response
) -> TokenResponse:
    """Create an account and log it in."""
    pair = await services.auth.register(
        body.email, body.password, body.display_name, client_info(request)
    )
    return token_response(pair, request, response)


@router.post(
    "/login",
    response_model=TokenResponse,
    dependencies=[rate_limit("login", "5/minute")],
    responses=responses(
        ErrorCode.AUTHENTICATION_FAILED,
        ErrorCode.ACCOUNT_DISABLED,
        ErrorCode.DATABASE_UNAVAILABLE,
        ErrorCode.SERVER_BUSY,
    ),
)
async def login(
    body: LoginRequest, services: ServicesDep, request: Request, response: Response
) -> TokenResponse:
    """Exchange email and password for a token pair (a new session)."""
    pair = await services.auth.login(body.email, body.password, client_info(request))
    return token_response(pair, request, response)


@router.post(
    "/refresh",
    response_model=TokenResponse,
    dependencies=[rate_limit("refresh", "10/minute")],
    responses=responses(
        ErrorCode.INVALID_TOKEN, ErrorCode.ACCOUNT_DISABLED, ErrorCode.DATABASE_UNAVAILABLE
    ),
)
async def refresh(
    services: ServicesDep, request: Request, response: Response, body: RefreshRequest | None = None
) -> TokenResponse:
    """Rotate a refresh token: the presented one is revoked, a new pair issued. With
    `X-Token-Transport: cookie` and no token in the body, the `alice_refresh` cookie's."""
    token = body.refresh_token if body is not None else None
    if token is None:
        if not wants_cookie(request):
            raise ValidationFailedError("body.refresh_token", "Field required")
        token = refresh_cookie(request)
        if token is None:
            raise InvalidTokenError()
    pair = await services.auth.refresh(token)
    return token_response(pair, request, response)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
)
async def logout(
    user: Annotated[CurrentUser | None, user_or_cookie("logout", "10/minute")],
    services: ServicesDep,
    request: Request,
) -> Response:
    """End every session of the user: refresh tokens revoked, access tokens refused. With
    `X-Token-Transport: cookie` the `alice_refresh` cookie may stand for the bearer token,
    and is cleared."""
    if user is not None:
        user_id = user.id
    else:
        token = refresh_cookie(request)
        if token is None:
            raise InvalidTokenError()
        user_id = await services.auth.user_of_refresh(token)
        await count_for_user(request, "logout", "10/minute", user_id)
    await services.auth.logout(user_id)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    if wants_cookie(request):
        clear_refresh_cookie(response, services.settings)
    return response


@router.get(
    "/me",
    response_model=UserResponse,
)
async def me(user: Annotated[CurrentUser, authenticated("me", "60/minute")]) -> Response:
    """The current user's profile."""
    return ModelResponse(UserResponse.model_validate(user))
