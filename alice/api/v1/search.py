"""/api/v1/chat/search: full-text search over the caller's messages and titles."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from alice.api.deps import ServicesDep, authenticated
from alice.api.errors import responses
from alice.api.openapi import operation_id
from alice.api.responses import ModelResponse
from alice.core.errors import ErrorCode, ValidationFailedError
from alice.schemas.search import SearchHit, SearchPage
from alice.services.auth import CurrentUser

router = APIRouter(prefix="/api/v1/chat", tags=["chat"], generate_unique_id_function=operation_id)

_AUTHED = (
    ErrorCode.UNAUTHORIZED,
    ErrorCode.INVALID_TOKEN,
    ErrorCode.ACCOUNT_DISABLED,
    ErrorCode.RATE_LIMIT_EXCEEDED,
)


@router.get(
    "/search",
    response_model=SearchPage,
    responses=responses(*_AUTHED, ErrorCode.VALIDATION_ERROR),
)
async def search(
    user: Annotated[CurrentUser, authenticated("search", "60/minute")],
    services: ServicesDep,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=200,
            description="Any text: every word must match, in any order; no operators.",
        ),
    ],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ModelResponse:
    """The caller's messages (every branch) and conversation titles holding every word of
    `q`, case- and accent-insensitively, newest first."""
    if "\x00" in q:
        raise ValidationFailedError("query.q", "must not contain NUL characters")
    hits, next_cursor = await services.search.search(user.id, q, limit, cursor)
    return ModelResponse(
        SearchPage(
            items=[
                SearchHit(
                    conversation_id=h.conversation_id,
                    message_id=h.message_id,
                    title=h.title,
                    snippet=h.snippet,
                    highlights=h.highlights,
                    created_at=h.created_at,
                )
                for h in hits
            ],
            next_cursor=next_cursor,
        )
    )
