"""Response models of /api/v1/auth/me/usage (SPEC section 15)."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel


class UsageDayResponse(BaseModel):
    date: date
    input_tokens: int
    output_tokens: int
    replies: int


class BudgetResponse(BaseModel):
    daily_tokens: int
    spent_today: int
    resets_at: datetime


class UsageResponse(BaseModel):
    items: list[UsageDayResponse]
    budget: BudgetResponse | None
