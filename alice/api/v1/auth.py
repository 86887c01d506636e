"""/api/v1/auth: register, login, refresh, logout, me (SPEC section 4)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response, status

from alice.api.deps import ServicesDep, authenticated, client_info, rate_limit
from alice.api.errors import responses
from alice.api.openapi import operation_id
from alice.api.responses import ModelResponse
from alice.core.errors import ErrorCode
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
    """The TokenResponse of a new pair, never cached."""
    response.headers.update(_NO_STORE)
    return TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
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
    body: RefreshRequest, services: ServicesDep, request: Request, response: Response
) -> TokenResponse:
    """Rotate a refresh token: the presented one is revoked, a new pair issued."""
    pair = await services.auth.refresh(body.refresh_token)
    return token_response(pair, request, response)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
)
async def logout(
    user: Annotated[CurrentUser, authenticated("logout", "10/minute")], services: ServicesDep
) -> Response:
    """End every session of the user: refresh tokens revoked, access tokens refused."""
    await services.auth.logout(user.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/me",
    response_model=UserResponse,
)
async def me(user: Annotated[CurrentUser, authenticated("me", "60/minute")]) -> Response:
    """The current user's profile."""
    return ModelResponse(UserResponse.model_validate(user))
