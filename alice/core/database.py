"""The async engine and session factory, for SQLite (embedded) and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import weakref
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple, cast

from sqlalchemy import URL, Connection, Engine, Row, Select, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import CursorResult, Dialect, Result, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import Executable

from alice.core.config import Settings
from alice.core.files import private_sqlite

SQLITE_BUSY_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_SECONDS = 2
COMMAND_TIMEOUT_SECONDS = 10
POOL_TIMEOUT_SECONDS = 3
# SQLite: how often the WAL is checkpointed after inline commits, and the size its file is cut
# back to when it starts again (`Direct.start_checkpoints`).
CHECKPOINT_SECONDS = 1.0
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# Past this many frames (pages of 4 KiB) the checkpoint empties the WAL (TRUNCATE).
WAL_RESTART_FRAMES = 4096

log = logging.getLogger("alice.database")
_Ts = TypeVarTuple("_Ts")
_T = TypeVar("_T")
_REMEMBERED_ROWS = 10_000
_S = TypeVar("_S", bound=Executable)


def create_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.database_url)
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if url.database and url.database != ":memory:":
            private_sqlite(Path(url.database), settings.data_dir)
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
    # When the WAL starts again from its beginning, its file is cut back to this size.
    cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    cur.close()


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


_sqlite_write_locks: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def write_lock(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
    """On SQLite, the lock the writers of this process take turns on: SQLite allows one
    writer at a time, and writers left to its busy handler sleep and retry, which under load
    ran into "database is locked". Elsewhere, nothing."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    return _sqlite_write_lock(engine)


def _sqlite_write_lock(engine: AsyncEngine) -> asyncio.Lock:
    lock = _sqlite_write_locks.get(engine)
    if lock is None:
        lock = _sqlite_write_locks[engine] = asyncio.Lock()
    return lock


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One short transaction: committed on success, rolled back on error, connection returned
    (on SQLite, under the process's write lock)."""
    engine = factory.kw["bind"]
    async with write_lock(engine), factory() as session, session.begin():
        yield session


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (the conditional updates decide races with it)."""
    return cast(CursorResult[Any], result).rowcount


# -- constant statements, run on SQLite's driver -------------------------------------------------
#
# SQLAlchemy's execution of a statement (its cache lookup, parameter processing, execution
# context and result) costs some 65 µs of Python here, against 10 µs for the same statement
# on the sqlite3 driver: on the embedded default a reply's start and end are about ten such
# statements, the largest share of its fixed cost that is ours. A statement built once at
# import and marked with `constant` is compiled by SQLAlchemy once, for SQLite, and then run
# on the driver's connection with SQLAlchemy's own type processors for its parameters and
# columns: the same SQL, the same values stored and read. Only on Direct's inline
# connections (`execute`, `Direct.all`); anywhere else, and for any statement this cannot plan,
# SQLAlchemy runs it as usual.

_CONSTANTS: dict[int, Executable] = {}
_PLANS: dict[int, _Plan | None] = {}


def constant(statement: _S) -> _S:
    """Mark a statement built once, at import, as one `execute` may run on the driver."""
    _CONSTANTS[id(statement)] = statement
    return statement


class _Plan:
    """A constant statement compiled for SQLite: its SQL, its parameters in order with their
    processors (the statement's own values processed once), its columns' processors."""

    __slots__ = ("sql", "names", "fixed", "binds", "required", "convert", "row", "is_insert")

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled: Any = cast(Any, statement).compile(dialect=dialect)
        if (
            compiled.positiontup is None
            or "POSTCOMPILE" in compiled.string
            or compiled.insert_prefetch
            or compiled.update_prefetch
            or compiled.effective_returning
        ):
            raise ValueError("not a plain statement")
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup)
        self.is_insert: bool = compiled.isinsert
        self.binds: dict[str, Callable[[Any], Any] | None] = {}
        self.fixed: dict[str, Any] = {}
        self.required: set[str] = set()
        for name in self.names:
            bind = compiled.binds[name]
            if bind.callable is not None:
                raise ValueError("a parameter computed at execution")
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self.binds[name] = process
            if bind.required or self.is_insert:
                self.required.add(name)
            else:
                self.fixed[name] = process(bind.value) if process else bind.value
        # A SELECT's rows: named tuples of its columns, the columns with a processor (UUIDs,
        # timestamps...) converted, the others (text, integers) as the driver gives them.
        self.convert: tuple[tuple[int, Callable[[Any], Any]], ...] = ()
        self.row: Any = None
        if isinstance(statement, Select):
            columns = statement.selected_columns
            processors = (
                c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
            )
            self.convert = tuple((i, p) for i, p in enumerate(processors) if p is not None)
            self.row = namedtuple("Row", list(columns.keys()))  # type: ignore[misc]

    def args(self, params: Mapping[str, Any]) -> list[Any] | None:
        """The driver's parameters, or None when one is missing (SQLAlchemy decides then)."""
        out = []
        for name in self.names:
            if name in params:
                process = self.binds[name]
                value = params[name]
                out.append(process(value) if process is not None else value)
            elif name in self.required:
                return None
            else:
                out.append(self.fixed[name])
        return out

    def rows(self, cursor: sqlite3.Cursor) -> list[Any]:
        if self.row is None:
            return []
        make, convert = self.row._make, self.convert
        if not convert:
            return [make(raw) for raw in cursor.fetchall()]
        out = []
        for raw in cursor.fetchall():
            values = list(raw)
            for i, process in convert:
                values[i] = process(values[i])
            out.append(make(values))
        return out


def _plan(statement: Executable, dialect: Dialect) -> _Plan | None:
    key = id(statement)
    if _CONSTANTS.get(key) is not statement:
        return None
    try:
        return _PLANS[key]
    except KeyError:
        pass
    plan = None
    try:
        plan = _Plan(statement, dialect)
    except (ValueError, AttributeError, KeyError, TypeError):
        log.warning("a constant statement cannot be planned; SQLAlchemy runs it", exc_info=True)
    _PLANS[key] = plan
    return plan


class Rows:
    """The result of a constant statement run on the driver: its rows (named tuples, values
    as SQLAlchemy would give them) and the rows it changed."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], count: int) -> None:
        self._rows = rows
        self.rowcount = count

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None


def execute(conn: Connection, statement: Executable, params: Any = None) -> Any:
    """`conn.execute(statement, params)`, on the sqlite3 driver when `conn` is one of Direct's
    inline connections and `statement` a `constant` it can plan; a list of parameter sets
    runs as executemany. The result has `all`, `first`, `scalar` and `rowcount` either way."""
    raw = conn.connection.dbapi_connection
    if type(raw) is sqlite3.Connection:
        plan = _plan(statement, conn.dialect)
        if plan is not None:
            many = isinstance(params, list)
            sets = params if many else [params or {}]
            args = [plan.args(p) for p in sets]
            if all(a is not None for a in args):
                try:
                    if many:
                        cursor = raw.executemany(plan.sql, args)
                    else:
                        cursor = raw.execute(plan.sql, args[0])
                    return Rows(plan.rows(cursor), cursor.rowcount)
                except sqlite3.Error as exc:
                    raise _as_sqlalchemy_error(conn, plan.sql, exc) from exc
    return conn.execute(statement, params)


def _as_sqlalchemy_error(conn: Connection, sql: str, exc: sqlite3.Error) -> StatementError:
    """The driver's error as SQLAlchemy raises it (IntegrityError, OperationalError for a busy
    lock, ...), which is what the callers catch."""
    return DBAPIError.instance(
        sql, None, exc, sqlite3.Error, hide_parameters=True, dialect=conn.dialect
    )


class Direct:
    """The short statements of the hottest paths, run where they cost least: the reads of
    every authenticated request and of the lists, and the transaction that starts a reply.

    On SQLite a read by key costs some 20 µs, while handing each statement to aiosqlite's
    thread and back costs several times that in thread switches (and, under load, in waits
    for the GIL): the transaction that starts a reply made 22 such round trips, 9 ms before
    the first token. So on SQLite these run on the event loop itself, through connections of
    a synchronous engine (the same dialect and column types):

    - reads through one that never writes, in autocommit: each statement sees all that was
      committed before it, by any connection of any process;
    - transactions through one that begins them IMMEDIATE (taking SQLite's write lock first)
      and never waits for it: its busy timeout is 0.

    WAL lets a reader go on while another connection writes; where SQLite would make either
    wait (another writer holds the lock), the work is rolled back and goes to the async
    engine instead, which waits without stopping the loop. In-memory databases and PostgreSQL
    always use the async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader: Connection | None = None
        self._writer: Connection | None = None
        # Inline commits since the last checkpoint, the task that checkpoints the WAL, and
        # what stops it between two checkpoints (never in the middle of one).
        self._commits = 0
        self._checkpointer: asyncio.Task[None] | None = None
        self._stop_checkpoints: asyncio.Event | None = None
        self._remembered: dict[Hashable, Any] = {}
        self._remembered_version: int | None = None
        url = engine.url
        self.inline = url.get_backend_name() == "sqlite" and url.database not in (
            None,
            "",
            ":memory:",
        )
        if self.inline:
            self._read_engine = _inline_engine(url, _sqlite_reader_pragmas)
            self._write_engine = _inline_engine(url, _sqlite_writer_pragmas)
            event.listen(self._write_engine, "begin", _begin_immediate)

    async def all(
        self, statement: Select[*_Ts], params: Mapping[str, object] | None = None
    ) -> Sequence[Row[*_Ts]]:
        if self.inline:
            try:
                return self._read_inline(statement, params)
            except OperationalError as exc:
                if not _sqlite_busy(exc):
                    raise
                log.debug("an inline read would wait; it goes through the async engine")
        async with self._engine.connect() as conn:
            return (await conn.execute(statement, params)).all()

    async def first(
        self, statement: Select[*_Ts], params: Mapping[str, object] | None = None
    ) -> Row[*_Ts] | None:
        rows = await self.all(statement, params)
        return rows[0] if rows else None

    async def first_unless_unchanged(
        self, key: Hashable, statement: Select[*_Ts], params: Mapping[str, object]
    ) -> Row[*_Ts] | None:
        """`first(statement, params)`, answered from memory when the database has not changed
        since this process read it for `key`: on SQLite, `PRAGMA data_version` tells, in
        2 µs, whether any other connection of any process has committed since (this one never
        writes). Any commit anywhere forgets every remembered row. Elsewhere, always a read."""
        if not self.inline:
            return await self.first(statement, params)
        version = self._data_version()
        if version is None:
            return await self.first(statement, params)
        # The statement is part of the key: one key under two statements is two rows.
        key = (statement, key)
        if version != self._remembered_version:
            self._remembered.clear()
            self._remembered_version = version
        elif key in self._remembered:
            return self._remembered[key]
        row = await self.first(statement, params)
        if self._remembered_version != version:
            # The read awaited (it went to the async engine) and meanwhile another request saw
            # a later version: this row may be from before that commit. Remember a row only
            # under the version it was read at.
            return row
        if len(self._remembered) >= _REMEMBERED_ROWS:
            self._remembered.pop(next(iter(self._remembered)))  # the oldest
        self._remembered[key] = row
        return row

    def _data_version(self) -> int | None:
        """The reader's `PRAGMA data_version`, straight from the driver (through SQLAlchemy's
        text execution it cost 20 times more); None when SQLite would make it wait."""
        conn = self._reader
        if conn is None or conn.closed:
            conn = self._reader = self._read_engine.connect()
        raw = conn.connection.dbapi_connection
        try:
            return int(raw.execute("PRAGMA data_version").fetchone()[0])  # type: ignore[union-attr]
        except sqlite3.OperationalError:
            return None

    async def transaction(self, work: Callable[[Connection], _T]) -> _T:
        """`work(connection)` in one transaction: committed when it returns, rolled back when
        it raises. It may run more than once (inline, rolled back at the lock, then again),
        so it must do nothing but statements on the connection.

        Inline first. While another writer of this process holds SQLite's lock (a transaction
        waiting in aiosqlite's thread, a checkpoint emptying the WAL), the work waits for it
        on the process's write lock and then runs inline: trying inline meanwhile would fail
        at the lock and send every write of the moment through the thread, one after the
        other (that cascade was a tenth of the CPU at 1,000 replies). Only when SQLite is
        still locked then (another process) does it go through the async engine, which waits
        without stopping the loop."""
        if not self.inline:
            async with write_lock(self._engine), self._engine.begin() as conn:
                return await conn.run_sync(work)
        lock = _sqlite_write_lock(self._engine)
        if not lock.locked():
            try:
                return self._write_inline(work)
            except OperationalError as exc:
                if not _sqlite_busy(exc):
                    raise
        async with lock:
            try:
                return self._write_inline(work)
            except OperationalError as exc:
                if not _sqlite_busy(exc):
                    raise
                log.debug("an inline transaction would wait; it goes through the async engine")
            async with self._engine.begin() as conn:
                return await conn.run_sync(work)

    def _read_inline(
        self, statement: Select[*_Ts], params: Mapping[str, object] | None
    ) -> Sequence[Row[*_Ts]]:
        conn = self._reader
        if conn is None or conn.closed:
            conn = self._reader = self._read_engine.connect()
        try:
            return execute(conn, statement, params).all()  # type: ignore[no-any-return]
        finally:
            if conn.in_transaction():
                conn.rollback()  # ends SQLAlchemy's transaction; SQLite began none for a SELECT

    def _write_inline(self, work: Callable[[Connection], _T]) -> _T:
        conn = self._writer
        if conn is None or conn.closed:
            conn = self._writer = self._write_engine.connect()
        with conn.begin():
            result = work(conn)
        self._commits += 1
        return result

    def start_checkpoints(self) -> None:
        """Checkpoint the WAL every `CHECKPOINT_SECONDS` after inline commits (SQLite only).

        The inline writer never checkpoints (it would copy pages and fsync on the event loop),
        and the async engine's connections, which would, seldom write: without this the WAL
        grew by some 170 KiB a reply for as long as the process ran (184 MB after 1,000
        replies of 50 tokens, the database itself 176 KB), and every read searched an
        ever longer WAL index. The checkpoint (`checkpoint`) runs in aiosqlite's thread."""
        if self.inline and self._checkpointer is None:
            self._stop_checkpoints = asyncio.Event()
            self._checkpointer = asyncio.create_task(
                self._checkpoint_forever(self._stop_checkpoints), name="alice-wal-checkpoints"
            )

    async def stop_checkpoints(self) -> None:
        """Stop the checkpoints, letting one under way finish (a checkpoint cancelled inside
        aiosqlite's thread could leave its connection waiting for ever)."""
        task, self._checkpointer = self._checkpointer, None
        if task is None or self._stop_checkpoints is None:
            return
        self._stop_checkpoints.set()
        await task

    async def _checkpoint_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECKPOINT_SECONDS):
                    await stop.wait()
            if self._commits and not stop.is_set():
                self._commits = 0
                await self.checkpoint()

    async def checkpoint(self) -> None:
        """Checkpoint the WAL, off the event loop (failures are logged, the next one retries).

        PASSIVE first: it never makes a writer wait. But under steady writes the WAL never
        empties (new frames come while it copies), so it never starts again from its
        beginning; once it holds more than `WAL_RESTART_FRAMES`, a TRUNCATE checkpoint waits
        for the writer in hand, holds new ones off while it copies the rest (this process's
        writers wait for it on the write lock), and empties it."""
        try:
            async with self._engine.connect() as conn:
                result = await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                row: Any = result.one()  # (busy, frames in the WAL, frames copied)
            if row[1] > WAL_RESTART_FRAMES:  # frames in the WAL
                # Under the process's write lock, taken before a connection as every writer
                # takes them (the other order could wait for a connection a lock holder
                # needs): this process's writers wait for it there, then run inline.
                async with write_lock(self._engine), self._engine.connect() as conn:
                    await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # noqa: BLE001 - the next one tries again
            log.warning("WAL checkpoint failed", exc_info=True)

    def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None
        if self.inline:
            self._read_engine.dispose()
            self._write_engine.dispose()


def _inline_engine(url: URL, pragmas: Callable[[Any, Any], None]) -> Engine:
    engine = create_sync_engine(
        url.set(drivername="sqlite"),
        poolclass=StaticPool,
        connect_args={"timeout": 0, "check_same_thread": False},
    )
    event.listen(engine, "connect", pragmas)
    return engine


def _sqlite_reader_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.execute("PRAGMA busy_timeout=0")
    cur.close()


def _sqlite_writer_pragmas(dbapi_conn: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_conn, record)
    # SQLAlchemy's recipe for pysqlite: the driver begins no transaction itself, the "begin"
    # event does (IMMEDIATE), so the reads of the work are in its transaction too.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=0")
    # A commit past the WAL's size checkpoints it, with an fsync: `Direct.start_checkpoints`
    # does that in a thread, never this connection, on the event loop.
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


def _begin_immediate(conn: Connection) -> None:
    # On the driver (through SQLAlchemy's text execution it cost six times more).
    try:
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise _as_sqlalchemy_error(conn, "BEGIN IMMEDIATE", exc) from exc


def _sqlite_busy(exc: OperationalError) -> bool:
    orig = exc.orig
    if not isinstance(orig, sqlite3.OperationalError):
        return False
    code = getattr(orig, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(orig) or "busy" in str(orig)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # extended codes too
