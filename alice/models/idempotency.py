"""Idempotency keys of `POST /chat/message` (SPEC section 6)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from alice.models.base import Base, UTCDateTime


class IdempotencyKey(Base):
    """A `POST /chat/message` sent with an `Idempotency-Key` (SPEC section 6): for 24 hours the
    same key and body from the same user re-attach to `message_id`'s reply instead of sending.

    `message_id` is the reply's id, on purpose without a foreign key: a reply deleted for
    having no text still answers its key (as "no reply", 204), never a second send."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of the parsed body
    conversation_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    message_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
