"""/api/v1/chat/conversations/{id}/export: one conversation as a download."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from alice.api.deps import ServicesDep, authenticated
from alice.api.errors import responses
from alice.api.openapi import operation_id
from alice.core.errors import ErrorCode
from alice.services.auth import CurrentUser
from alice.services.export import ExportFormat

router = APIRouter(prefix="/api/v1/chat", tags=["chat"], generate_unique_id_function=operation_id)

_AUTHED = (
    ErrorCode.UNAUTHORIZED,
    ErrorCode.INVALID_TOKEN,
    ErrorCode.ACCOUNT_DISABLED,
    ErrorCode.RATE_LIMIT_EXCEEDED,
)


@router.get(
    "/conversations/{conversation_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "An attachment: Markdown (the active branch) or JSON (every branch).",
            "headers": {
                "Content-Disposition": {
                    "description": '`attachment; filename="<safe title>.<md|json>"` and '
                    "`filename*=UTF-8''…` (RFC 6266).",
                    "schema": {"type": "string"},
                }
            },
            "content": {
                "text/markdown": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        },
        **responses(*_AUTHED, ErrorCode.VALIDATION_ERROR, ErrorCode.CONVERSATION_NOT_FOUND),
    },
)
async def export_conversation(
    conversation_id: uuid.UUID,
    user: Annotated[CurrentUser, authenticated("export", "60/minute")],
    services: ServicesDep,
    format: Annotated[ExportFormat, Query()] = "markdown",  # noqa: A002 - SPEC's name
) -> StreamingResponse:
    """Download a conversation: `markdown` (a title line, then each message of the active
    branch under a heading naming its role) or `json` (the conversation and every message
    of every branch)."""
    export = await services.export.export(user.id, conversation_id, format)
    return StreamingResponse(
        export.body,
        media_type=export.media_type,
        headers={"Content-Disposition": export.content_disposition, "Cache-Control": "no-store"},
    )
