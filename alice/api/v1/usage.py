"""/api/v1/auth/me/usage: the caller's tokens per UTC day and today's budget."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from alice.api.deps import ServicesDep, authenticated
from alice.api.errors import responses
from alice.api.openapi import operation_id
from alice.api.responses import ModelResponse
from alice.core.errors import ErrorCode
from alice.schemas.usage import BudgetResponse, UsageDayResponse, UsageResponse
from alice.services.auth import CurrentUser

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], generate_unique_id_function=operation_id)


@router.get(
    "/me/usage",
    response_model=UsageResponse,
    responses=responses(
        ErrorCode.UNAUTHORIZED,
        ErrorCode.INVALID_TOKEN,
        ErrorCode.ACCOUNT_DISABLED,
        ErrorCode.RATE_LIMIT_EXCEEDED,
        ErrorCode.VALIDATION_ERROR,
    ),
)
async def my_usage(
    user: Annotated[CurrentUser, authenticated("usage", "60/minute")],
    services: ServicesDep,
    days: Annotated[int, Query(ge=1, le=90)] = 30,
) -> ModelResponse:
    """Input and output tokens and replies per UTC day for the last `days` days (today
    included), oldest first, days without use as zeros; `budget` is null without
    ALICE_USER_DAILY_TOKENS. Tokens stay counted when their conversation is deleted."""
    items, budget = await services.usage.usage(user.id, days)
    return ModelResponse(
        UsageResponse(
            items=[
                UsageDayResponse(
                    date=d.date,
                    input_tokens=d.input_tokens,
                    output_tokens=d.output_tokens,
                    replies=d.replies,
                )
                for d in items
            ],
            budget=None
            if budget is None
            else BudgetResponse(
                daily_tokens=budget.daily_tokens,
                spent_today=budget.spent_today,
                resets_at=budget.resets_at,
            ),
        )
    )
