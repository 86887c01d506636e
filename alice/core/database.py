"""The async engine and session factory, for SQLite (embedded) and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVarTuple, cast

from sqlalchemy import Connection, Row, Select, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import CursorResult, Result, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool

from alice.core.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_SECONDS = 2
COMMAND_TIMEOUT_SECONDS = 10
POOL_TIMEOUT_SECONDS = 3

log = logging.getLogger("alice.database")
_Ts = TypeVarTuple("_Ts")


def create_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.database_url)
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            # A fixed set of connections (each is a thread): overflow ones opened and closed
            # under load cost a thread and the pragmas each time. (An in-memory database is
            # one connection, SQLAlchemy's StaticPool.)
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


class Reads:
    """The short read-only queries of the hottest paths (the user of every authenticated
    request, the pages of the lists), run where they cost least.

    On SQLite, a read by key costs some 20 µs, while handing it to aiosqlite's thread and
    back costs several times that in thread switches (and, under load, in waits for the
    GIL). So these reads run on the event loop itself, through one connection of a
    synchronous engine (the same dialect and column types) that never writes. It reads in
    autocommit: each statement sees all that was committed before it, by any connection of
    any process. WAL lets a reader go on while another connection writes; in the rare case
    where SQLite would make it wait (its busy timeout here is 0), the read goes to the
    async engine instead, as do all reads of an in-memory database and of PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._inline: Connection | None = None
        url = engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            sync_engine = create_sync_engine(
                url.set(drivername="sqlite"),
                poolclass=StaticPool,
                connect_args={"timeout": 0, "check_same_thread": False},
            )
            event.listen(sync_engine, "connect", _sqlite_reader_pragmas)
            self._sync_engine = sync_engine

    @property
    def inline(self) -> bool:
        """Whether reads run on the event loop (SQLite) rather than through the async engine."""
        return hasattr(self, "_sync_engine")

    async def all(
        self, statement: Select[*_Ts], params: Mapping[str, object] | None = None
    ) -> Sequence[Row[*_Ts]]:
        if self.inline:
            try:
                return self._read_inline(statement, params)
            except OperationalError as exc:
                if not _sqlite_busy(exc):
                    raise
                log.debug("inline read would wait; it goes through the async engine")
        async with self._engine.connect() as conn:
            return (await conn.execute(statement, params)).all()

    async def first(
        self, statement: Select[*_Ts], params: Mapping[str, object] | None = None
    ) -> Row[*_Ts] | None:
        rows = await self.all(statement, params)
        return rows[0] if rows else None

    def _read_inline(
        self, statement: Select[*_Ts], params: Mapping[str, object] | None
    ) -> Sequence[Row[*_Ts]]:
        conn = self._inline
        if conn is None or conn.closed:
            conn = self._inline = self._sync_engine.connect()
        try:
            return conn.execute(statement, params).all()
        finally:
            conn.rollback()  # ends SQLAlchemy's transaction; SQLite began none for a SELECT

    def close(self) -> None:
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        if self.inline:
            self._sync_engine.dispose()


def _sqlite_reader_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.execute("PRAGMA busy_timeout=0")
    cur.close()


def _sqlite_busy(exc: OperationalError) -> bool:
    orig = exc.orig
    if not isinstance(orig, sqlite3.OperationalError):
        return False
    code = getattr(orig, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(orig) or "busy" in str(orig)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # extended codes too
