"""/api/v1/auth, the rest of a user's life (SPEC section 13): profile, password change and
reset, sessions, account deletion and export."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from alice.api.deps import ServicesDep, authenticated, client_info, rate_limit
from alice.api.errors import responses
from alice.api.openapi import operation_id
from alice.api.responses import ModelResponse
from alice.api.v1.auth import token_response
from alice.core.errors import ErrorCode
from alice.schemas.auth import (
    AcceptedResponse,
    AccountDelete,
    PasswordChange,
    PasswordForgot,
    PasswordReset,
    ProfileUpdate,
    SessionList,
    SessionResponse,
    TokenResponse,
    UserResponse,
)
from alice.services.auth import CurrentUser

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], generate_unique_id_function=operation_id)

_AUTHED = (
    ErrorCode.UNAUTHORIZED,
    ErrorCode.INVALID_TOKEN,
    ErrorCode.ACCOUNT_DISABLED,
    ErrorCode.RATE_LIMIT_EXCEEDED,
)
_BODY = (ErrorCode.VALIDATION_ERROR, ErrorCode.PAYLOAD_TOO_LARGE)


@router.patch(
    "/me",
    response_model=UserResponse,
    responses=responses(*_AUTHED, *_BODY),
)
async def update_me(
    body: ProfileUpdate,
    user: Annotated[CurrentUser, authenticated("update_me", "60/minute")],
    services: ServicesDep,
) -> Response:
    """Change the display name (other fields are ignored)."""
    updated = await services.accounts.update_profile(user, body.display_name)
    return ModelResponse(UserResponse.model_validate(updated))


@router.post(
    "/password",
    response_model=TokenResponse,
    responses=responses(*_AUTHED, *_BODY, ErrorCode.INVALID_PASSWORD, ErrorCode.SERVER_BUSY),
)
async def change_password(
    body: PasswordChange,
    user: Annotated[CurrentUser, authenticated("password", "5/minute")],
    services: ServicesDep,
    request: Request,
    response: Response,
) -> TokenResponse:
    """Change the password: every session ends, and the caller gets a new one."""
    pair = await services.accounts.change_password(
        user, body.current_password, body.new_password, client_info(request)
    )
    return token_response(pair, request, response)


@router.get(
    "/sessions",
    response_model=SessionList,
    responses=responses(*_AUTHED),
)
async def list_sessions(
    user: Annotated[CurrentUser, authenticated("sessions", "60/minute")],
    services: ServicesDep,
) -> Response:
    """The user's live sessions (logins), newest first; `current` marks the caller's."""
    items = await services.accounts.list_sessions(user)
    return ModelResponse(SessionList(items=[SessionResponse.model_validate(s) for s in items]))


@router.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(*_AUTHED, ErrorCode.VALIDATION_ERROR, ErrorCode.SESSION_NOT_FOUND),
)
async def end_session(
    session_id: uuid.UUID,
    user: Annotated[CurrentUser, authenticated("end_session", "60/minute")],
    services: ServicesDep,
) -> Response:
    """End one session: its refresh tokens revoked, its access tokens refused at once."""
    await services.accounts.end_session(user, session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_FORGOT_ANSWER = "If this e-mail belongs to an account, a link to reset its password is on its way."


@router.post(
    "/password/forgot",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AcceptedResponse,
    dependencies=[rate_limit("password_forgot", "5/minute")],
    responses=responses(*_BODY, ErrorCode.RATE_LIMIT_EXCEEDED, ErrorCode.MAIL_UNAVAILABLE),
)
async def forgot_password(body: PasswordForgot, services: ServicesDep) -> Response:
    """Ask for a password-reset e-mail. The same answer, in the same time, for any e-mail:
    the lookup and the e-mail happen after it."""
    services.recovery.check_available()
    return ModelResponse(
        AcceptedResponse(detail=_FORGOT_ANSWER),
        status_code=status.HTTP_202_ACCEPTED,
        background=BackgroundTask(services.recovery.forgot, body.email),
    )


@router.post(
    "/password/reset",
    response_model=TokenResponse,
    dependencies=[rate_limit("password_reset", "5/minute")],
    responses=responses(
        *_BODY,
        ErrorCode.RATE_LIMIT_EXCEEDED,
        ErrorCode.INVALID_TOKEN,
        ErrorCode.DATABASE_UNAVAILABLE,
        ErrorCode.SERVER_BUSY,
    ),
)
async def reset_password(
    body: PasswordReset, services: ServicesDep, request: Request, response: Response
) -> TokenResponse:
    """Set a new password with the token of a reset e-mail: every session ends, and the
    caller gets a new one."""
    pair = await services.recovery.reset(body.token, body.new_password, client_info(request))
    return token_response(pair, request, response)


@router.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(*_AUTHED, *_BODY, ErrorCode.INVALID_PASSWORD, ErrorCode.SERVER_BUSY),
)
async def delete_me(
    body: AccountDelete,
    user: Annotated[CurrentUser, authenticated("delete_me", "5/minute")],
    services: ServicesDep,
) -> Response:
    """Delete the account, with its password: running replies are stopped, then the user,
    sessions, conversations and messages are deleted in one transaction."""
    await services.account_data.delete_account(user, body.password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_EXPORT_SCHEMA = {
    "type": "object",
    "properties": {
        "user": {"$ref": "#/components/schemas/UserResponse"},
        "conversations": {
            "type": "array",
            "items": {
                "allOf": [
                    {"$ref": "#/components/schemas/ConversationResponse"},
                    {
                        "type": "object",
                        "properties": {
                            "messages": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/MessageResponse"},
                            }
                        },
                        "required": ["messages"],
                    },
                ]
            },
        },
        "exported_at": {"type": "string", "format": "date-time"},
    },
    "required": ["user", "conversations", "exported_at"],
}


@router.get(
    "/me/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The whole account, as a JSON attachment (streamed).",
            "content": {"application/json": {"schema": _EXPORT_SCHEMA}},
            "headers": {
                "Content-Disposition": {
                    "schema": {"type": "string"},
                    "description": 'attachment; filename="alice-export-<date>.json"',
                }
            },
        },
        **responses(*_AUTHED),
    },
)
async def export_me(
    user: Annotated[CurrentUser, authenticated("export_me", "5/minute")],
    services: ServicesDep,
) -> StreamingResponse:
    """Download the account: the profile, every conversation with all its messages."""
    filename = f"alice-export-{user.id}.json"
    return StreamingResponse(
        services.account_data.export(user),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )
