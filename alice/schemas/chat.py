"""Request and response models of /api/v1/chat (SPEC section 5)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

CONTENT_MAX = 32_000


def _content(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only white space")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _title(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 200:
        raise ValueError("must be 1 to 200 characters after trimming")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class MessageCreate(BaseModel):
    content: Annotated[str, Field(min_length=1, max_length=CONTENT_MAX), AfterValidator(_content)]
    conversation_id: uuid.UUID | None = None
    model: Annotated[
        str | None,
        Field(
            max_length=100,
            description="One of GET /chat/models; a new conversation keeps it for later "
            "messages. Default: the conversation's model, else the first of ALICE_AI_MODELS.",
        ),
    ] = None
    edit_of: uuid.UUID | None = Field(
        default=None,
        description="A user message of `conversation_id`: the new message becomes its sibling "
        "(an edit), and the active branch ends at it.",
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"content": "Hello ALICE!", "conversation_id": None}]}
    )


class BranchSwitch(BaseModel):
    message_id: uuid.UUID


class ConversationUpdate(BaseModel):
    title: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_title)]


class StopRequest(BaseModel):
    last_index: Annotated[int, Field(ge=-1)] | None = None


class ConversationResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime
    model: str | None = Field(default=None, description="The model its replies use.")


class MessageResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    conversation_id: uuid.UUID
    role: Literal["user", "assistant"]
    content: str
    status: Literal["complete", "streaming", "stopped", "incomplete"]
    token_count: int
    event_id: str | None = Field(
        description="For a streaming message: the stream position its content covers."
    )
    created_at: datetime
    model: str | None = Field(
        default=None, description="The model that wrote an assistant message (null for a user's)."
    )
    parent_id: uuid.UUID | None = Field(
        description="The message this one follows; null for a first message."
    )
    sibling_index: int = Field(description="0-based place among its parent's children.")
    sibling_count: int = Field(description="How many children its parent has (itself too).")


class ConversationPage(BaseModel):
    items: list[ConversationResponse]
    next_cursor: str | None


class MessagePage(BaseModel):
    items: list[MessageResponse]
    next_cursor: str | None


class AIModelResponse(BaseModel):
    id: str
    default: bool


class AIModelList(BaseModel):
    items: list[AIModelResponse]
