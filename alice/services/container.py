"""Everything a process builds once at start and shares across requests."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alice.core.config import Settings
from alice.core.ratelimit import RateLimiter
from alice.services.auth import AuthService


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    limiter: RateLimiter
    auth: AuthService
