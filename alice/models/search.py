from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, Index, Integer, Text, Uuid
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from alice.models.base import Base


class SearchDoc(Base):
    """One searchable text: a message (`message_id` set) or a conversation's title.

    Written only by database triggers (migration 0004), so every path that inserts, edits or
    deletes a message or a conversation keeps the index in step, cascades included. `id` is
    the sort key, newest first: the doc's time (a message's `created_at`, a title's
    `updated_at`) in microseconds × 1024, plus a tie-break. On SQLite the words live in the
    FTS5 table `search_fts` (rowid = `id`); on PostgreSQL in `tsv`, under a GIN index."""

    __tablename__ = "search_docs"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    conversation_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    message_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    tsv: Mapped[str | None] = mapped_column(
        Text().with_variant(TSVECTOR(), "postgresql"), nullable=True
    )

    __table_args__ = (
        Index("ix_search_docs_message_id", "message_id"),
        Index("ix_search_docs_conversation_id", "conversation_id", "message_id"),
        # PostgreSQL pages a user's matches by (user_id, id); SQLite filters by the user's
        # token inside FTS5 and pages by its rowid, so neither index exists there.
        Index("ix_search_docs_user_id", "user_id", "id").ddl_if(dialect="postgresql"),
        Index("ix_search_docs_tsv", "tsv", postgresql_using="gin").ddl_if(dialect="postgresql"),
    )
