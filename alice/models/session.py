from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from alice.models.base import Base, UTCDateTime, utcnow


class Session(Base):
    """One login's refresh-token family (SPEC section 13): its id is the tokens' `fam` and the
    access tokens' `sid`. Revoking it refuses both at once."""

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Moves at each refresh (not at each request: that would be a write per request).
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The end of the family's life: its login plus ALICE_SESSION_MAX_DAYS, never extended.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Of the request that started the session; personal data, deleted with the account.
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(200), nullable=True)

    __table_args__ = (Index("ix_sessions_user_created", "user_id", "created_at"),)


class PasswordReset(Base):
    """The one live password-reset token of a user (a newer replaces an older): only its
    SHA-256 is kept. Consumed by deleting the row, so it works once."""

    __tablename__ = "password_resets"

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
