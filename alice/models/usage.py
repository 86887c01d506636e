from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import BigInteger, Date, ForeignKey, Integer, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from alice.models.base import Base


class UsageDay(Base):
    """The tokens one user spent on one UTC day: a ledger added to when each reply ends.

    Kept apart from the messages so that deleting a conversation or a message refunds
    nothing (SPEC 15); it goes only with the user."""

    __tablename__ = "usage_daily"

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    replies: Mapped[int] = mapped_column(Integer, default=0)
