"""The async engine and session factory, for SQLite (embedded) and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.engine import CursorResult, Result, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from alice.core.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_SECONDS = 2
COMMAND_TIMEOUT_SECONDS = 10
POOL_TIMEOUT_SECONDS = 3


def create_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.database_url)
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        # A fixed set of connections (each is a thread): overflow ones opened and closed under
        # load cost a thread and the pragmas each time.
        kwargs.update(pool_size=settings.database_pool_size, max_overflow=0, pool_timeout=30)
    else:
        # A database that cannot be reached costs a request at most the pool timeout plus the
        # connect timeout (5 s), then 503 DATABASE_UNAVAILABLE: no hang, even past the pool.
        connect_args: dict[str, Any] = {
            "timeout": CONNECT_TIMEOUT_SECONDS,
            "command_timeout": COMMAND_TIMEOUT_SECONDS,
        }
        if settings.database_schema:
            connect_args["server_settings"] = {"search_path": settings.database_schema}
        kwargs.update(
            pool_size=settings.database_pool_size,
            max_overflow=0,
            pool_timeout=POOL_TIMEOUT_SECONDS,
            pool_pre_ping=True,
            connect_args=connect_args,
        )
    # Errors are logged: their text must never carry a statement's values (password hashes,
    # token hashes, message text).
    engine = create_async_engine(url, hide_parameters=True, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


_sqlite_write_locks: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One short transaction: committed on success, rolled back on error, connection returned.

    On SQLite the writers of this process take turns on an asyncio lock: SQLite allows one
    writer at a time, and writers left to its busy handler sleep and retry, which under load
    ran into "database is locked"."""
    engine = factory.kw.get("bind")
    lock = None
    if isinstance(engine, AsyncEngine) and engine.dialect.name == "sqlite":
        lock = _sqlite_write_locks.get(engine)
        if lock is None:
            lock = _sqlite_write_locks[engine] = asyncio.Lock()
    if lock is None:
        async with factory() as session, session.begin():
            yield session
        return
    async with lock, factory() as session, session.begin():
        yield session


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (the conditional updates decide races with it)."""
    return cast(CursorResult[Any], result).rowcount
