"""The application factory: wiring of settings, services, middleware and routers."""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from alice.api import errors, ops
from alice.api.v1 import auth
from alice.core.config import Settings, get_settings
from alice.core.database import create_engine, create_session_factory
from alice.core.middleware import EdgeMiddleware
from alice.core.ratelimit import RateLimiter
from alice.core.security import PasswordHashing, TokenCodec
from alice.services.auth import AuthService
from alice.services.container import Services


def raise_open_file_limit() -> None:
    """Open streams are sockets: let this process use as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def build_services(settings: Settings) -> Services:
    engine = create_engine(settings)
    sessions = create_session_factory(engine)
    hashing = PasswordHashing(settings)
    codec = TokenCodec(settings)
    return Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        limiter=RateLimiter(settings),
        auth=AuthService(sessions, hashing, codec, settings),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise_open_file_limit()
        services = build_services(settings)
        app.state.services = services
        try:
            yield
        finally:
            await services.engine.dispose()

    app = FastAPI(
        title="ALICE",
        version="0.1.0",
        description="Accounts with JWT auth, and conversations with Claude streamed over SSE.",
        lifespan=lifespan,
    )
    errors.install(app)
    api = APIRouter(prefix="/api/v1")
    api.include_router(auth.router)
    app.include_router(api)
    app.include_router(ops.router)

    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "X-RateLimit-Limit",
                            "X-RateLimit-Remaining", "X-RateLimit-Reset"],
        )
    app.add_middleware(EdgeMiddleware)
    if settings.forwarded_allow_list:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_list)
    return app
