"""Everything a process builds once at start and shares across requests."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alice.core.config import Settings
from alice.core.database import Direct
from alice.core.metrics import Metrics
from alice.core.ratelimit import RateLimiter
from alice.services.account_data import AccountData
from alice.services.accounts import AccountService
from alice.services.ai.base import AIProvider
from alice.services.auth import AuthService
from alice.services.chat import ChatService
from alice.services.eventlog.base import EventLog
from alice.services.export import ExportService
from alice.services.generation import GenerationRegistry
from alice.services.recovery import PasswordRecovery
from alice.services.replies import ReplyService
from alice.services.search import SearchService
from alice.services.slots import Slots
from alice.services.usage import UsageService


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    direct: Direct
    limiter: RateLimiter
    auth: AuthService
    accounts: AccountService
    recovery: PasswordRecovery
    account_data: AccountData
    chat: ChatService
    provider: AIProvider
    event_log: EventLog
    generations: GenerationRegistry
    replies: ReplyService
    metrics: Metrics
    search: SearchService
    export: ExportService
    # Counted slots over every process: open streams per user (and other per-user caps).
    slots: Slots
    usage: UsageService
