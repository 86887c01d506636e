"""/api/v1/chat/models: the models a user may choose (ALICE_AI_MODELS)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from alice.api.deps import ServicesDep, authenticated
from alice.api.errors import responses
from alice.api.openapi import operation_id
from alice.api.responses import ModelResponse
from alice.core.errors import ErrorCode
from alice.schemas.chat import AIModelList, AIModelResponse
from alice.services.auth import CurrentUser

router = APIRouter(prefix="/api/v1/chat", tags=["chat"], generate_unique_id_function=operation_id)


@router.get(
    "/models",
    response_model=AIModelList,
    responses=responses(
        ErrorCode.UNAUTHORIZED,
        ErrorCode.INVALID_TOKEN,
        ErrorCode.ACCOUNT_DISABLED,
        ErrorCode.RATE_LIMIT_EXCEEDED,
    ),
)
async def list_models(
    user: Annotated[CurrentUser, authenticated("models", "60/minute")],
    services: ServicesDep,
) -> ModelResponse:
    """The models `POST /message` accepts as `model`; the default one first."""
    models = services.settings.ai_model_list
    return ModelResponse(
        AIModelList(items=[AIModelResponse(id=m, default=i == 0) for i, m in enumerate(models)])
    )
