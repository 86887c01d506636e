"""UsageService: the tokens each user spends, per UTC day, and the daily budget (SPEC 15).

The database is the truth: each reply adds its input and output tokens to the ledger
`usage_daily` (one row per user and UTC day) in the transaction that saves its end, so every
process sees the same sum, and deleting a conversation or a message refunds nothing. A reply
counts on the UTC day it ends. The budget is checked before a reply starts: a user whose
spent tokens have reached ALICE_USER_DAILY_TOKENS is refused until the next UTC midnight; a
reply already running may finish over it.

`clock` is public so that tests can move the day without sleeping.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Executable, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from alice.core.database import Direct, constant
from alice.core.errors import QuotaExceededError
from alice.models import UsageDay


@dataclass(frozen=True, slots=True)
class DayUsage:
    date: date
    input_tokens: int
    output_tokens: int
    replies: int


@dataclass(frozen=True, slots=True)
class Budget:
    daily_tokens: int
    spent_today: int
    resets_at: datetime


_DAYS = constant(
    select(UsageDay.day, UsageDay.input_tokens, UsageDay.output_tokens, UsageDay.replies)
    .where(
        UsageDay.user_id == bindparam("user_id"),
        UsageDay.day >= bindparam("since", type_=UsageDay.day.type),
    )
    .order_by(UsageDay.day)
)
_TODAY = constant(
    select(UsageDay.input_tokens, UsageDay.output_tokens).where(
        UsageDay.user_id == bindparam("user_id"),
        UsageDay.day == bindparam("day", type_=UsageDay.day.type),
    )
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class UsageService:
    def __init__(self, direct: Direct, daily_tokens: int | None, *, sqlite_dialect: bool) -> None:
        self._direct = direct
        self._daily_tokens = daily_tokens
        self._upsert = _SQLITE_UPSERT if sqlite_dialect else _POSTGRES_UPSERT
        self.clock: Callable[[], datetime] = _utcnow

    def today(self) -> date:
        return self.clock().astimezone(UTC).date()

    def resets_at(self) -> datetime:
        """The next UTC midnight."""
        return datetime.combine(self.today() + timedelta(days=1), time(), tzinfo=UTC)

    async def spent_today(self, user_id: uuid.UUID) -> int:
        row = await self._direct.first(_TODAY, {"user_id": user_id, "day": self.today()})
        return 0 if row is None else int(row.input_tokens + row.output_tokens)

    async def check_budget(self, user_id: uuid.UUID) -> None:
        """Refuse (429 QUOTA_EXCEEDED, Retry-After: seconds to the next UTC midnight) when the
        user's tokens of today have reached ALICE_USER_DAILY_TOKENS; nothing when it is unset."""
        if self._daily_tokens is None:
            return
        if await self.spent_today(user_id) >= self._daily_tokens:
            wait = (self.resets_at() - self.clock()).total_seconds()
            raise QuotaExceededError(headers={"Retry-After": str(max(1, math.ceil(wait)))})

    async def usage(self, user_id: uuid.UUID, days: int) -> tuple[list[DayUsage], Budget | None]:
        """The user's tokens per UTC day for the last `days` days (today included), oldest
        first, days without use as zeros; and today's budget, if there is one."""
        today = self.today()
        since = today - timedelta(days=days - 1)
        rows = {
            r.day: r for r in await self._direct.all(_DAYS, {"user_id": user_id, "since": since})
        }
        items = []
        for i in range(days):
            day = since + timedelta(days=i)
            r = rows.get(day)
            items.append(
                DayUsage(day, r.input_tokens, r.output_tokens, r.replies)
                if r
                else DayUsage(day, 0, 0, 0)
            )
        budget = None
        if self._daily_tokens is not None:
            r = rows.get(today)
            spent = int(r.input_tokens + r.output_tokens) if r else 0
            budget = Budget(self._daily_tokens, spent, self.resets_at())
        return items, budget

    def record_statement(
        self, user_id: uuid.UUID, input_tokens: int, output_tokens: int, replies: int
    ) -> tuple[Executable, dict[str, Any]] | None:
        """The statement and parameters that add a reply's tokens to today's row of the
        ledger, for the caller to run in the transaction that saves the reply's end (None:
        nothing to add). The statement is built once: its cache key is then computed once,
        not from a new statement's values at every reply's end."""
        if not (input_tokens or output_tokens or replies):
            return None
        return self._upsert, {
            "ledger_user_id": user_id,
            "ledger_day": self.today(),
            "ledger_input_tokens": input_tokens,
            "ledger_output_tokens": output_tokens,
            "ledger_replies": replies,
        }


def _ledger_upsert(insert: Any) -> Executable:
    """`insert` (the dialect's, with ON CONFLICT) of a reply's tokens into the user's day,
    adding to the row that is there."""
    columns = ("user_id", "day", "input_tokens", "output_tokens", "replies")
    stmt = insert(UsageDay).values(
        {
            name: bindparam(f"ledger_{name}", type_=UsageDay.__table__.c[name].type)
            for name in columns
        }
    )
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=[UsageDay.user_id, UsageDay.day],
        set_={
            "input_tokens": UsageDay.input_tokens + stmt.excluded.input_tokens,
            "output_tokens": UsageDay.output_tokens + stmt.excluded.output_tokens,
            "replies": UsageDay.replies + stmt.excluded.replies,
        },
    )


_SQLITE_UPSERT = constant(_ledger_upsert(sqlite.insert))
_POSTGRES_UPSERT = _ledger_upsert(postgresql.insert)
