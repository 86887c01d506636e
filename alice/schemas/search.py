"""Response models of /api/v1/chat/search (SPEC section 15)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class SearchHit(BaseModel):
    conversation_id: uuid.UUID
    message_id: uuid.UUID | None = Field(description="null for a hit on the title")
    title: str
    snippet: str = Field(description="Plain text, at most 200 characters, around the match.")
    highlights: list[tuple[int, int]] = Field(
        description="[start, end) offsets, in code points, of the matched words in `snippet`."
    )
    created_at: datetime = Field(
        description="The message's `created_at`, or the conversation's `updated_at` for a title."
    )


class SearchPage(BaseModel):
    items: list[SearchHit]
    next_cursor: str | None
