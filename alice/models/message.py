from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, Index, Integer, String, Text, Uuid, case, func, select, text
from sqlalchemy.orm import Mapped, aliased, column_property, mapped_column

from alice.models.base import Base, UTCDateTime, new_id, utcnow


class MessageRole(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    STREAMING = "streaming"
    STOPPED = "stopped"
    INCOMPLETE = "incomplete"


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.COMPLETE)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    # For a running reply: the stream position (seq) its saved `content` covers, and when the
    # owner last saved it. A reply whose heartbeat is older than six beats is taken for lost.
    event_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Issue 14: the model that wrote an assistant message, and the tokens the provider
    # reported for it (a user message has none).
    model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    # The tree (SPEC section 14; `alice/services/branches.py` keeps it). A message's parent
    # (null for a first message), its distance from the root, and its place among its
    # siblings by creation. `active_depth` is `depth` while the message is on the
    # conversation's active branch and null otherwise: a page of the active branch is then
    # one range of the unique index (conversation_id, active_depth), at any depth.
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("messages.id", ondelete="CASCADE"), nullable=True
    )
    depth: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    sibling_index: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    active_depth: Mapped[int | None] = mapped_column(Integer, nullable=True)
    if TYPE_CHECKING:
        sibling_count: int  # below the class: a count of the rows of this very table

    __table_args__ = (
        Index("ix_messages_conversation_created", "conversation_id", "created_at", "id"),
        Index(
            "uq_messages_one_streaming",
            "conversation_id",
            unique=True,
            sqlite_where=text("status = 'streaming'"),
            postgresql_where=text("status = 'streaming'"),
        ),
        Index(
            "ix_messages_streaming_heartbeat",
            "heartbeat_at",
            sqlite_where=text("status = 'streaming'"),
            postgresql_where=text("status = 'streaming'"),
        ),
        # One message per depth on the active branch; the pages read ranges of it.
        Index("uq_messages_active_depth", "conversation_id", "active_depth", unique=True),
        # Children of a message in creation order (and the parent key's own index, which
        # PostgreSQL needs for the cascade of a deleted message).
        Index("ix_messages_parent", "parent_id", "sibling_index"),
        # First messages of a conversation (their parent is null), in creation order.
        Index(
            "ix_messages_roots",
            "conversation_id",
            "sibling_index",
            sqlite_where=text("parent_id IS NULL"),
            postgresql_where=text("parent_id IS NULL"),
        ),
    )


# How many messages share the message's parent (itself included): loaded with every message,
# as two index lookups (the first messages of a conversation share a null parent).
_sibling = aliased(Message)
SIBLING_COUNT = case(
    (
        Message.parent_id.is_(None),
        select(func.count())
        .where(
            _sibling.conversation_id == Message.conversation_id,
            _sibling.parent_id.is_(None),
        )
        .scalar_subquery(),
    ),
    else_=select(func.count()).where(_sibling.parent_id == Message.parent_id).scalar_subquery(),
)
Message.sibling_count = column_property(SIBLING_COUNT)  # type: ignore[assignment]
