"""The events of a reply stream (SPEC section 6): the JSON `data` of each, by event name.

The server writes these payloads itself (encoded once, where they enter the log); the models
document them in OpenAPI and type them for `alice.client`."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel

from alice.core.errors import STREAM_ERROR_CODES, ErrorCode
from alice.schemas.chat import MessageResponse


class ConversationEventData(BaseModel):
    """`conversation`: the first event of a reply."""

    conversation_id: uuid.UUID
    is_new: bool
    message_id: uuid.UUID


class TokenEventData(BaseModel):
    """`token`: one text delta; `index` 0, 1, 2, … with no gap."""

    content: str
    index: int


class DoneEventData(BaseModel):
    """`done`: the reply ended and is stored; `last_index` is its last token's index."""

    message_id: uuid.UUID
    conversation_id: uuid.UUID
    total_tokens: int
    status: Literal["complete", "stopped"]
    last_index: int


class ErrorEventData(BaseModel):
    """`error`: the reply ended in a failure (its text so far is kept as `incomplete`)."""

    detail: str
    code: ErrorCode


# event name -> the model of its `data`; `snapshot` carries the stored message.
EVENT_DATA: dict[str, type[BaseModel]] = {
    "conversation": ConversationEventData,
    "token": TokenEventData,
    "done": DoneEventData,
    "error": ErrorEventData,
    "snapshot": MessageResponse,
}
TERMINAL_EVENTS = frozenset({"done", "error", "snapshot"})
__all__ = [
    "EVENT_DATA",
    "STREAM_ERROR_CODES",
    "TERMINAL_EVENTS",
    "ConversationEventData",
    "DoneEventData",
    "ErrorEventData",
    "TokenEventData",
]
