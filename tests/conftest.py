"""Shared fixtures. One fixture parametrizes the backend: SQLite with the in-process limiter
always, and PostgreSQL with Redis when ALICE_TEST_POSTGRES_URL / ALICE_TEST_REDIS_URL are set.
Each test gets a clean database (a fresh SQLite file or a fresh PostgreSQL schema) and a Redis
key prefix of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from alice.core.config import Settings
from alice.core.migrate import upgrade
from alice.main import create_app

POSTGRES_URL = os.environ.get("ALICE_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("ALICE_TEST_REDIS_URL")

BACKENDS = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])

# Cheap Argon2 for tests only; production keeps argon2-cffi's defaults (see Settings).
TEST_SETTINGS: dict[str, Any] = {
    "env": "test",
    "secret_key": "test-secret-key-that-is-at-least-32-bytes-long!",
    "argon2_time_cost": 1,
    "argon2_memory_kib": 1024,
    "argon2_parallelism": 1,
    "mock_token_delay_ms": 0,
    "sse_ping_seconds": 15,
}

PASSWORD = "SecurePass123"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for each test (migrating each time costs more)."""
    path = tmp_path_factory.mktemp("template") / "alice.db"
    upgrade(Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_settings(backend: str, tmp_path: Path, sqlite_template: Path) -> Callable[..., Settings]:
    """Settings for this test's backend, with overrides; every call shares one database."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    base: dict[str, Any] = {**TEST_SETTINGS, "data_dir": tmp_path / "data"}
    base["mail_outbox"] = tmp_path / "outbox"  # reset e-mails (SPEC 13), never in the repo
    if backend == "sqlite":
        db = tmp_path / "alice.db"
        shutil.copy(sqlite_template, db)
        base["database_url"] = f"sqlite+aiosqlite:///{db}"
    else:
        base["database_url"] = POSTGRES_URL
        base["database_schema"] = prefix.replace("-", "_")
        base["redis_url"] = REDIS_URL
        base["redis_prefix"] = prefix

    def make(**overrides: Any) -> Settings:
        return Settings(**{**base, **overrides})

    return make


@pytest.fixture
async def settings(make_settings: Callable[..., Settings], backend: str) -> AsyncIterator[Settings]:
    s = make_settings()
    if backend == "postgres":
        await _create_schema(s)
        try:
            yield s
        finally:
            await _drop_schema(s)
    else:
        yield s


async def _create_schema(s: Settings) -> None:
    import asyncpg

    conn = await asyncpg.connect(_plain_pg_url(s.database_url))
    try:
        await conn.execute(f'CREATE SCHEMA "{s.database_schema}"')
    finally:
        await conn.close()
    await asyncio.to_thread(upgrade, s)


async def _drop_schema(s: Settings) -> None:
    import asyncpg

    conn = await asyncpg.connect(_plain_pg_url(s.database_url))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{s.database_schema}" CASCADE')
    finally:
        await conn.close()
    if s.redis_url:
        await delete_redis_keys(s.redis_url, f"*{s.redis_prefix}*")


async def delete_redis_keys(url: str, pattern: str) -> None:
    """Delete the keys of a test's Redis prefix (`pattern`, as SCAN's MATCH)."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(url)
    try:
        keys = [k async for k in r.scan_iter(match=pattern)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


def _plain_pg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=60):
        yield application


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of an access token."""
    return {"Authorization": f"Bearer {token}"}


def assert_error(
    resp: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """A response in the spec's error shape: `status`, `code`, a detail, and `field` among
    its errors when given. Returns the body."""
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


def client_for(app: FastAPI, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://alice.test", timeout=30)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c


@dataclass
class UserSession:
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@pytest.fixture
def make_user(app: FastAPI) -> Callable[..., Any]:
    """Create a user through AuthService (not the rate-limited route) and log it in."""

    async def make(email: str | None = None, password: str = PASSWORD) -> UserSession:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        pair = await app.state.services.auth.register(email, password, None)
        return UserSession(email, password, pair.access_token, pair.refresh_token)

    return make


@pytest.fixture
async def user(make_user: Callable[..., Any]) -> UserSession:
    return await make_user()


# --- chat: a fake Anthropic API and the app on a real socket --------------------------------


@pytest.fixture(scope="session")
def fake_anthropic() -> Any:
    from tests.fakes.anthropic_server import FakeAnthropicServer

    with FakeAnthropicServer() as fake:
        yield fake


@pytest.fixture
def ai_settings(fake_anthropic: Any) -> dict[str, Any]:
    """Overrides that send replies through the official SDK to the fake Anthropic API."""
    from pydantic import SecretStr

    return {
        "anthropic_api_key": SecretStr("test-key"),
        "anthropic_base_url": fake_anthropic.base_url,
    }


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app on a real loopback socket, in this event loop: for streams that a client
    leaves early, which an in-memory transport cannot show."""
    import socket

    import uvicorn

    application = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(application, lifespan="on", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield application, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def live(settings: Settings, ai_settings: dict[str, Any]) -> AsyncIterator[Any]:
    """The app with the fake Anthropic provider, served on a loopback port."""
    async with serve(settings.model_copy(update=ai_settings)) as (application, url):
        yield LiveApp(application, url)


@dataclass
class LiveApp:
    app: FastAPI
    url: str

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, **kwargs)

    async def user(self, email: str | None = None) -> UserSession:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        pair = await self.app.state.services.auth.register(email, PASSWORD, None)
        return UserSession(email, PASSWORD, pair.access_token, pair.refresh_token)
