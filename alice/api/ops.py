"""Operations endpoints: /health and /ready (SPEC section 8)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from alice.api.deps import ServicesDep
from alice.api.openapi import operation_id
from alice.schemas.ops import HealthResponse, ReadyResponse
from alice.services.container import Services

READY_TIMEOUT_SECONDS = 3.0

router = APIRouter(tags=["operations"], generate_unique_id_function=operation_id)


_HEALTHY = b'{"status":"ok"}'


@router.get("/health", response_model=HealthResponse)
async def health() -> Response:
    """200 while the process runs."""
    # Made once: the response model documents it, nothing validates it per request.
    return Response(_HEALTHY, media_type="application/json")


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={
        503: {"model": ReadyResponse, "description": "A dependency does not answer: `checks`."}
    },
)
async def ready(services: ServicesDep) -> JSONResponse:
    """200 when the database (and Redis, when configured) answer; else 503 naming the failure."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with services.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:  # noqa: BLE001 - any failure means "not ready", reported below
        checks["database"] = "unavailable"
    if services.settings.redis_url:
        # Redis carries the shared rate limits and the reply event logs: both must answer.
        checks["redis"] = "ok" if await _redis_answers(services) else "unavailable"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


async def _redis_answers(services: Services) -> bool:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            limits, events = await asyncio.gather(
                services.limiter.ping(), services.event_log.ping()
            )
    except Exception:  # noqa: BLE001 - a timeout or a client error: Redis does not answer
        return False
    return limits and events
