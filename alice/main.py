"""The application factory: wiring of settings, services, middleware and routers."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from alice.api import errors, openapi, ops, pages
from alice.api.deps import MetricsToken
from alice.api.v1 import account, ai_models, auth, chat, export, search, usage
from alice.core.config import Settings, get_settings
from alice.core.database import Direct, create_engine, create_session_factory
from alice.core.metrics import Metrics
from alice.core.middleware import EdgeMiddleware
from alice.core.ratelimit import RateLimiter
from alice.core.routing import index_routes
from alice.core.security import PasswordHashing, TokenCodec
from alice.services.account_data import AccountData
from alice.services.accounts import AccountService
from alice.services.ai import create_provider
from alice.services.auth import AuthService
from alice.services.budgets import Budgets
from alice.services.chat import ChatService
from alice.services.container import Services
from alice.services.eventlog import make_event_log
from alice.services.export import ExportService
from alice.services.generation import GenerationRegistry
from alice.services.mail import make_mailer
from alice.services.recovery import PasswordRecovery
from alice.services.replies import ReplyService
from alice.services.search import SearchService
from alice.services.slots import make_slots
from alice.services.usage import UsageService


def raise_open_file_limit() -> None:
    """Open streams are sockets: let this process use as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# The cyclic garbage collector's thresholds (gen0 allocations, gen1 and gen2 collections),
# for a process that holds thousands of open streams: see `settle_garbage_collector`.
GC_THRESHOLDS = (50_000, 20, 100)


def settle_garbage_collector() -> None:
    """Once started: what start-up built (modules, models, the app) leaves the collector's
    view (`gc.freeze`); young collections run every 50,000 allocations (Python: 700), and a
    full one at most every 100 middle ones (Python: 10).

    At 1,000 open streams a process holds some 300,000 objects of its streams; with Python's
    defaults a full collection walked them all (and the start-up's) 0.13-0.3 s at a time,
    a stall every reader saw as a gap, and the collector took 1.2-1.9 s of 6-8 s of CPU.
    With these settings: 0.2 s in all, CPU per stream 8-10 ms -> 7-8.4 ms (1,000 streams of
    50 tokens, `bench/run.py`'s streams job, three runs each). The cost is memory: cyclic
    garbage lives longer before a collection finds it (a young cycle up to 50,000
    allocations; one that survived into the oldest generation until the next full one)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def shutdown_requested() -> bool:
    """SIGTERM or SIGINT reached uvicorn (its server is the bound signal handler's self)."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


async def _start_shutdown_at_sigterm(services: Services) -> None:
    # uvicorn runs the lifespan's shutdown only once every connection has closed; the grace
    # of running replies has to start at the signal itself.
    while not shutdown_requested():  # noqa: ASYNC110 - a flag set by a signal handler
        await asyncio.sleep(0.25)
    services.generations.begin_shutdown(services.settings.shutdown_grace_seconds)
    services.replies.server_closing()


def build_services(settings: Settings, metrics: Metrics) -> Services:
    engine = create_engine(settings)
    sessions = create_session_factory(engine)
    direct = Direct(engine)
    hashing = PasswordHashing(settings)
    codec = TokenCodec(settings)
    event_log = make_event_log(
        settings.redis_url,
        retention_seconds=settings.stream_retention_seconds,
        max_events=settings.ai_max_tokens + 16,
        ttl_seconds=settings.generation_max_seconds + settings.stream_retention_seconds,
        key_prefix=f"{settings.redis_prefix}:gen:",
    )
    auth = AuthService(sessions, direct, hashing, codec, settings)
    accounts = AccountService(sessions, hashing, auth, settings)
    provider = create_provider(settings, on_error=metrics.ai_error)
    chat = ChatService(
        sessions, direct, settings.ai_context_messages, models=settings.ai_model_list
    )
    usage_service = UsageService(
        direct, settings.user_daily_tokens, sqlite_dialect=settings.is_sqlite
    )
    slots = make_slots(settings.redis_url, settings.redis_prefix)
    generations = GenerationRegistry(
        settings, sessions, direct, provider, event_log, metrics, usage=usage_service
    )
    budgets = Budgets(usage_service, slots, settings.user_max_running_replies)
    replies = ReplyService(settings, chat, generations, event_log, metrics, budgets=budgets)
    return Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        direct=direct,
        limiter=RateLimiter(settings),
        auth=auth,
        accounts=accounts,
        recovery=PasswordRecovery(
            sessions, accounts, make_mailer(settings), settings, on_mail=metrics.mail
        ),
        chat=chat,
        provider=provider,
        event_log=event_log,
        generations=generations,
        replies=replies,
        account_data=AccountData(sessions, accounts, generations, replies),
        metrics=metrics,
        search=SearchService(direct, sqlite=settings.is_sqlite),
        export=ExportService(chat, direct),
        slots=slots,
        usage=usage_service,
    )


def served_app() -> FastAPI:
    """The app of `alice serve` (each worker's): as `create_app`, with the process's garbage
    collector settled once the app has started. Tests, which build many apps in one process,
    keep Python's defaults."""
    return create_app(settle_gc=True)


def create_app(settings: Settings | None = None, *, settle_gc: bool = False) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise_open_file_limit()
        services = build_services(settings, metrics)
        app.state.services = services
        await services.event_log.start()
        await services.slots.start()
        services.direct.start_checkpoints()
        try:
            # Alone (no Redis), every `streaming` row at start is a crash's leftover.
            await services.generations.start_background(sweep_all=settings.redis_url is None)
        except Exception:  # noqa: BLE001 - a database down at start must not stop the process
            logging.getLogger("alice").warning("start-up reaper failed", exc_info=True)
        watcher = asyncio.create_task(_start_shutdown_at_sigterm(services), name="alice-sigterm")
        if settle_gc:
            settle_garbage_collector()
        try:
            yield
        finally:
            watcher.cancel()
            await services.generations.shutdown(settings.shutdown_grace_seconds)
            await services.recovery.drain(grace=settings.smtp_timeout_seconds)
            await services.event_log.close()
            await services.slots.close()
            await services.provider.aclose()
            await services.direct.stop_checkpoints()
            services.direct.close()
            await services.engine.dispose()
            services.auth.close()

    app = FastAPI(
        title="ALICE",
        version="0.1.0",
        description="Accounts with JWT auth, and conversations with Claude streamed over SSE.",
        lifespan=lifespan,
        # /docs and /redoc are alice.api.pages: vendored assets, no CDN (SPEC 8).
        docs_url=None,
        redoc_url=None,
        # ALICE exports Prometheus metrics (/metrics) and logs; FastAPI's native OpenTelemetry
        # looked up the global OTel providers (and the environment) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        generate_unique_id_function=openapi.operation_id,
    )
    errors.install(app)
    openapi.install(app)
    # Routers carry their full prefix, so a route's template (logs, metrics) is its whole path.
    # Their routes join the app's own list: FastAPI 0.16x matches a request against an
    # included router's routes up to four times (a quarter of /health's time); a flat list is
    # matched once. The routers set no dependencies or options of their own that this skips.
    for router in (
        auth.router,
        account.router,
        chat.router,
        search.router,
        export.router,
        ai_models.router,
        usage.router,
        ops.router,
        pages.router,
    ):
        app.router.routes.extend(router.routes)
    app.mount("/static", pages.static_files, name="static")

    metrics_guard = []
    if settings.metrics_token is not None:
        metrics_guard = [Depends(MetricsToken(settings.metrics_token.get_secret_value()))]

    @app.get(
        "/metrics",
        tags=["operations"],
        name="metrics",
        response_class=PlainTextResponse,
        dependencies=metrics_guard,
    )
    async def metrics_endpoint() -> PlainTextResponse:
        """Prometheus text format (with ALICE_METRICS_TOKEN set: only for that bearer token)."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    index_routes(app.router)

    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            # The refresh cookie (SPEC 13) crosses origins only for the origins listed by
            # name: with "*" Starlette would echo any origin that sends a cookie.
            allow_credentials="*" not in settings.cors_origin_list,
            allow_methods=["*"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Last-Event-ID",
                "X-Request-ID",
                "Idempotency-Key",
                "X-Token-Transport",
            ],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
            ],
        )
    app.add_middleware(EdgeMiddleware, on_response=metrics.observe_request)
    if settings.forwarded_allow_list:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_list)
    return app
