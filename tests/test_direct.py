"""The statements of the hottest paths (alice.core.database.Direct): on SQLite they run on the
event loop through connections of their own; they must still see every commit at once, write
all or nothing, and never make the loop wait on a lock."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import (
    Column,
    Connection,
    Date,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    bindparam,
    event,
    insert,
    select,
    update,
)
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from alice.core.config import Settings
from alice.core.database import Direct, constant, create_engine, execute, write_lock
from alice.main import create_app
from alice.models.base import UTCDateTime
from alice.models.message import MessageStatus
from tests.chatkit import messages, send
from tests.conftest import TEST_SETTINGS, client_for

_R = TypeVar("_R")
_t = Table("t", MetaData(), Column("x", Integer, primary_key=True))


def _wal_file(tmp_path: Path) -> Path:
    path = tmp_path / "locked.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    return path


async def test_a_logout_through_one_process_is_refused_by_another_at_once(app, settings, make_user):
    # Two applications on one database, each with its own engines and connections, as two
    # worker processes have. B has read the user (it would answer from a stale snapshot or cache);
    # A ends the session; B must refuse the token on the very next request.
    user = await make_user()
    other = create_app(settings)
    async with LifespanManager(other), client_for(app) as a, client_for(other) as b:
        for _ in range(2):
            assert (await b.get("/api/v1/auth/me", headers=user.headers)).status_code == 200
        assert (await a.post("/api/v1/auth/logout", headers=user.headers)).status_code == 204
        refused = await b.get("/api/v1/auth/me", headers=user.headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "INVALID_TOKEN"


def _hold_exclusively(path: Path, seconds: float) -> None:
    """Another writer holds the file until `seconds` from now (locking_mode=EXCLUSIVE keeps
    even WAL readers out)."""
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA locking_mode=EXCLUSIVE")
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("INSERT INTO t VALUES (2)")

    def release() -> None:
        writer.execute("COMMIT")
        writer.close()

    asyncio.get_running_loop().call_later(seconds, release)


async def _while_ticking(work: Callable[[], Awaitable[_R]]) -> tuple[_R, float, int]:
    """What `work` returns, how long it took, and how often the loop ran meanwhile."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        result = await work()
        return result, time.monotonic() - started, ticks
    finally:
        ticking.cancel()


@pytest.fixture
async def locked(tmp_path: Path) -> AsyncIterator[tuple[Direct, Path]]:
    path = _wal_file(tmp_path)
    settings = Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}")
    engine = create_engine(settings)
    direct = Direct(engine)
    assert direct.inline
    _hold_exclusively(path, 0.3)
    try:
        yield direct, path
    finally:
        direct.close()
        await engine.dispose()


async def test_a_read_that_would_wait_for_a_lock_goes_to_the_engine_and_the_loop_runs_on(
    locked,
):
    direct, _ = locked
    rows, waited, ticks = await _while_ticking(lambda: direct.all(select(_t.c.x).order_by(_t.c.x)))
    # The read waited for the lock (through aiosqlite's busy handler) and saw the commit...
    assert [r.x for r in rows] == [1, 2]
    assert waited >= 0.25
    # ...while the loop went on: a read waiting on the loop itself would have stopped it.
    assert ticks >= 10


async def test_a_transaction_that_would_wait_for_a_lock_goes_to_the_engine_and_runs_once(
    locked,
):
    direct, path = locked
    runs = 0

    def work(conn: Connection) -> list[int]:
        nonlocal runs
        runs += 1
        conn.execute(insert(_t).values(x=3))
        return [r.x for r in conn.execute(select(_t.c.x).order_by(_t.c.x))]

    seen, waited, ticks = await _while_ticking(lambda: direct.transaction(work))
    # Inside its transaction the work saw the other writer's commit and its own row.
    assert seen == [1, 2, 3]
    assert waited >= 0.25
    assert ticks >= 10
    # The inline attempt was refused at BEGIN IMMEDIATE, before the work ran: it ran once.
    assert runs == 1
    # The inline connection is usable again once the lock is free.
    await direct.transaction(lambda conn: conn.execute(insert(_t).values(x=4)))
    check = sqlite3.connect(path)
    assert [r[0] for r in check.execute("SELECT x FROM t ORDER BY x")] == [1, 2, 3, 4]
    check.close()


async def test_writes_behind_this_process_s_waiting_writer_wait_for_it_then_run_inline(tmp_path):
    """While a transaction of this process waits in aiosqlite's thread holding SQLite's lock,
    Direct's transactions wait for it on the process's write lock and then run on the loop,
    in order: not each through the thread after failing at SQLite's lock."""
    path = _wal_file(tmp_path)
    settings = Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}")
    engine = create_engine(settings)
    direct = Direct(engine)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def slow_writer() -> None:
        async with write_lock(engine), engine.begin() as conn:
            await conn.execute(insert(_t).values(x=10))  # SQLite's write lock is taken
            holding.set()
            await release.wait()

    ran_on: list[tuple[int, bool]] = []

    def adds(x: int) -> Callable[[Connection], None]:
        def work(conn: Connection) -> None:
            # Inline: SQLite's own driver connection, on the loop (the async engine's is
            # aiosqlite's, whose statements go to its thread).
            inline = type(conn.connection.dbapi_connection) is sqlite3.Connection
            ran_on.append((x, inline))
            conn.execute(insert(_t).values(x=x))

        return work

    try:
        writer = asyncio.create_task(slow_writer())
        await holding.wait()
        waiting = [asyncio.create_task(direct.transaction(adds(x))) for x in (11, 12, 13)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in waiting)  # they wait for the writer in hand...
        assert ran_on == []  # ...without trying SQLite's lock over and over
        release.set()
        await asyncio.gather(writer, *waiting)
        # Then each ran once, on the loop (inline), in the order they came.
        assert ran_on == [(11, True), (12, True), (13, True)]
        async with engine.connect() as conn:
            rows = (await conn.execute(select(_t.c.x).order_by(_t.c.x))).all()
        assert [r.x for r in rows] == [1, 10, 11, 12, 13]
    finally:
        direct.close()
        await engine.dispose()


async def test_an_inline_transaction_commits_all_or_nothing(tmp_path):
    path = _wal_file(tmp_path)
    settings = Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}")
    engine = create_engine(settings)
    direct = Direct(engine)

    def fails_after_a_write(conn: Connection) -> None:
        conn.execute(insert(_t).values(x=5))
        raise RuntimeError("the work fails")

    def duplicate(conn: Connection) -> None:
        conn.execute(insert(_t).values(x=6))
        conn.execute(insert(_t).values(x=1))  # the primary key is taken

    def adds(conn: Connection) -> None:
        conn.execute(insert(_t).values(x=7))

    try:
        with pytest.raises(RuntimeError):
            await direct.transaction(fails_after_a_write)
        with pytest.raises(IntegrityError):
            await direct.transaction(duplicate)
        await direct.transaction(adds)
        # What the async engine (another connection) sees: only the committed work.
        async with engine.connect() as conn:
            rows = (await conn.execute(select(_t.c.x).order_by(_t.c.x))).all()
        assert [r.x for r in rows] == [1, 7]
    finally:
        direct.close()
        await engine.dispose()


async def test_the_wal_is_checkpointed_and_emptied_while_inline_writes_go_on(tmp_path, monkeypatch):
    """The inline writer never checkpoints (that fsyncs on the loop): without Direct's
    checkpointer the WAL grew for as long as the process wrote. Under steady writes a PASSIVE
    checkpoint never catches up, so past WAL_RESTART_FRAMES the WAL must be emptied, and no
    commit may be lost on the way. (The interval and threshold are module constants: nothing
    public sets them; here they are small so that the test is short.)"""
    from alice.core import database

    monkeypatch.setattr(database, "CHECKPOINT_SECONDS", 0.02)
    monkeypatch.setattr(database, "WAL_RESTART_FRAMES", 50)
    path = _wal_file(tmp_path)
    wal = path.with_name(path.name + "-wal")
    settings = Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}")
    engine = create_engine(settings)
    direct = Direct(engine)
    direct.start_checkpoints()
    sizes = []
    try:
        for i in range(2000):  # a frame of 4 KiB a commit at least: 8 MB without checkpoints
            await direct.transaction(lambda conn, x=100 + i: conn.execute(insert(_t).values(x=x)))
            if i % 20 == 0:
                await asyncio.sleep(0.005)  # the loop turns, as between requests
            sizes.append(wal.stat().st_size)
        rows = await direct.all(select(_t.c.x))
    finally:
        await direct.stop_checkpoints()
        direct.close()
        await engine.dispose()
    assert len(rows) == 2001
    assert max(sizes) < 2_000_000, max(sizes)
    assert any(b < a for a, b in zip(sizes, sizes[1:], strict=False))  # emptied along the way


async def test_a_checkpoint_waiting_for_the_write_lock_holds_no_connection(tmp_path, monkeypatch):
    """The TRUNCATE checkpoint takes the write lock before a connection, as every writer
    does: with one connection in the pool, a holder of the lock that needs a connection gets
    it while the checkpoint waits (the other order kept it until the pool's timeout), and the
    checkpoint then empties the WAL."""
    from alice.core import database

    monkeypatch.setattr(database, "WAL_RESTART_FRAMES", 0)
    path = _wal_file(tmp_path)
    wal = path.with_name(path.name + "-wal")
    settings = Settings(
        **{**TEST_SETTINGS, "database_pool_size": 1}, database_url=f"sqlite+aiosqlite:///{path}"
    )
    engine = create_engine(settings)
    direct = Direct(engine)
    try:
        await direct.transaction(lambda conn: conn.execute(insert(_t).values(x=20)))
        assert wal.stat().st_size > 0
        async with write_lock(engine):
            checkpoint = asyncio.create_task(direct.checkpoint())
            await asyncio.sleep(0.1)  # its PASSIVE part is done; it waits for the lock
            assert not checkpoint.done()
            async with asyncio.timeout(5), engine.begin() as conn:
                await conn.execute(insert(_t).values(x=21))
        await asyncio.wait_for(checkpoint, 5)
        assert wal.stat().st_size == 0  # TRUNCATE emptied it
        rows = await direct.all(select(_t.c.x).order_by(_t.c.x))
        assert [r.x for r in rows] == [1, 20, 21]
    finally:
        direct.close()
        await engine.dispose()


async def test_an_in_memory_database_is_read_through_the_engine():
    settings = Settings(**TEST_SETTINGS, database_url="sqlite+aiosqlite://")
    engine = create_engine(settings)
    try:
        assert not Direct(engine).inline
    finally:
        await engine.dispose()


@pytest.mark.parametrize("statement", ["INSERT INTO t VALUES (3)", "DELETE FROM t"])
def test_the_inline_connection_cannot_write(tmp_path, statement):
    path = _wal_file(tmp_path)
    settings = Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}")
    direct = Direct(create_engine(settings))
    try:
        with direct._read_engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                raw.execute(statement)
    finally:
        direct.close()


async def test_a_user_disabled_through_another_connection_is_refused_at_once(
    app, client, backend, settings, make_user
):
    # The user row is remembered while the database is unchanged (SQLite); a commit by any
    # other connection, here a bare sqlite3 one standing for another process, must be seen
    # on the very next request.
    if backend != "sqlite":
        pytest.skip("a bare sqlite3 connection to the database file")
    user = await make_user()
    for _ in range(2):
        assert (await client.get("/api/v1/auth/me", headers=user.headers)).status_code == 200
    other = sqlite3.connect(settings.database_url.split("///", 1)[1])
    other.execute("UPDATE users SET is_active = 0")
    other.commit()
    other.close()
    refused = await client.get("/api/v1/auth/me", headers=user.headers)
    assert refused.status_code == 403
    assert refused.json()["code"] == "ACCOUNT_DISABLED"


async def test_rows_are_remembered_only_while_nothing_is_committed(tmp_path):
    path = _wal_file(tmp_path)
    settings = Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}")
    engine = create_engine(settings)
    direct = Direct(engine)
    selects: list[str] = []
    event.listen(
        direct._read_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: (
            selects.append(statement) if statement.startswith("SELECT") else None
        ),
    )
    query = select(_t.c.x).where(_t.c.x == bindparam("x"))
    try:
        first = await direct.first_unless_unchanged(1, query, {"x": 1})
        again = await direct.first_unless_unchanged(1, query, {"x": 1})
        assert first is not None and again is not None and first.x == again.x == 1
        assert len(selects) == 1  # the second came from memory
        # The same key under another statement is another row: read, not remembered.
        other = select(_t.c.x).where(_t.c.x == bindparam("x") + 0)
        assert (await direct.first_unless_unchanged(1, other, {"x": 1})) is not None
        assert len(selects) == 2
        # Any commit, by any other connection, even to another row: the next one reads.
        await direct.transaction(lambda conn: conn.execute(insert(_t).values(x=9)))
        assert (await direct.first_unless_unchanged(1, query, {"x": 1})) is not None
        assert len(selects) == 3
        other = sqlite3.connect(path)
        other.execute("DELETE FROM t WHERE x = 1")
        other.commit()
        other.close()
        assert await direct.first_unless_unchanged(1, query, {"x": 1}) is None
        assert len(selects) == 4
    finally:
        direct.close()
        await engine.dispose()


@pytest.mark.parametrize(
    "stored",
    [
        "2026-03-01 12:34:56.789012",  # what SQLAlchemy writes: the one-call path
        "2026-03-01 12:34:56",  # written by something else: the general path
        "2026-03-01T12:34:56.789+00:00",
    ],
)
def test_sqlite_timestamps_are_read_as_aware_utc_whichever_way_they_were_written(stored):
    from sqlalchemy.dialects import sqlite

    from alice.models.base import UTCDateTime

    dialect = sqlite.dialect()
    process = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)
    value = process(stored)
    expected = datetime.fromisoformat(stored)
    expected = expected.replace(tzinfo=UTC) if expected.tzinfo is None else expected
    assert value == expected
    assert value.utcoffset() == timedelta(0)
    assert process(None) is None


async def test_a_row_read_before_a_commit_is_not_remembered_under_the_version_after_it(tmp_path):
    # A read that falls back to the async engine awaits; meanwhile another connection commits
    # (a logout, a disable) and another request moves the remembered version past it. The
    # slow read's row, from before that commit, must not be served under the later version.
    path = _wal_file(tmp_path)
    settings = Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}")
    engine = create_engine(settings)
    direct = Direct(engine)
    query = select(_t.c.x).where(_t.c.x == bindparam("x"))
    real_first = direct.first
    read_done, release = asyncio.Event(), asyncio.Event()
    slow_calls = 0

    async def first_with_a_slow_first_call(statement, params=None):  # type: ignore[no-untyped-def]
        nonlocal slow_calls
        row = await real_first(statement, params)
        if slow_calls == 0:
            slow_calls += 1
            read_done.set()
            await release.wait()  # as the async engine's answer comes back late
        return row

    direct.first = first_with_a_slow_first_call  # type: ignore[method-assign]
    try:
        slow = asyncio.create_task(direct.first_unless_unchanged(1, query, {"x": 1}))
        await read_done.wait()
        other = sqlite3.connect(path)
        other.execute("DELETE FROM t WHERE x = 1")
        other.commit()
        other.close()
        assert await direct.first_unless_unchanged(1, query, {"x": 1}) is None
        release.set()
        assert (await slow) is not None  # its caller gets what it read...
        # ...but nothing more is remembered from it: the row is gone since that commit.
        assert await direct.first_unless_unchanged(1, query, {"x": 1}) is None
    finally:
        direct.close()
        await engine.dispose()


# -- constant statements on the driver ---------------------------------------------------------

_typed = Table(
    "typed",
    MetaData(),
    Column("id", Uuid, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("day", Date),
    Column("status", String(16)),
    Column("body", Text),
    Column("n", Integer, default=7),
)
_INSERT_TYPED = constant(insert(_typed))
_TYPED_BY_ID = constant(
    select(_typed).where(_typed.c.id == bindparam("id"), _typed.c.status != MessageStatus.STREAMING)
)
_TYPED_TOUCHED = constant(
    update(_typed)
    .where(_typed.c.id == bindparam("touched_id"))
    .values(body=bindparam("touched_body", type_=Text()), day=None)
)


@contextmanager
def _sqlalchemy_statements() -> Iterator[list[str]]:
    """The SQL of every statement SQLAlchemy hands a cursor meanwhile, on any engine."""
    seen: list[str] = []

    def record(conn, cursor, statement, params, context, many) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


@pytest.fixture
async def typed(tmp_path: Path) -> AsyncIterator[tuple[Direct, AsyncEngine, Path]]:
    """Direct, its async engine and the file, on a database of the table `_typed`."""
    path = tmp_path / "typed.db"
    sync = create_sync_engine(f"sqlite:///{path}")
    _typed.metadata.create_all(sync)
    sync.dispose()
    settings = Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}")
    engine = create_engine(settings)
    direct = Direct(engine)
    try:
        yield direct, engine, path
    finally:
        direct.close()
        await engine.dispose()


async def test_constant_statements_run_on_the_driver_and_store_and_read_what_sqlalchemy_does(
    typed,
):
    """A `constant` statement on an inline connection skips SQLAlchemy's execution, not its
    types: what it stores, SQLAlchemy reads back as it stored it itself, and what it reads
    equals SQLAlchemy's reading, type for type (UUIDs, aware timestamps, dates, text)."""
    direct, engine, path = typed
    assert direct.inline
    at = datetime(2026, 12, 7, 21, 4, 41, 123456, tzinfo=UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "at": at + timedelta(microseconds=i),
            "day": date(2026, 12, 7),
            "status": MessageStatus.COMPLETE,
            "body": f"héllo {i} ✓",
            "n": i,
        }
        for i in range(2)
    ]
    by_sqlalchemy = {**rows[0], "id": uuid.uuid4(), "n": 5}
    with _sqlalchemy_statements() as seen:
        inserted = await direct.transaction(lambda conn: execute(conn, _INSERT_TYPED, rows))
        await direct.transaction(lambda conn: conn.execute(_INSERT_TYPED, by_sqlalchemy))
        fast = [await direct.first(_TYPED_BY_ID, {"id": r["id"]}) for r in rows]
        changed = await direct.transaction(
            lambda conn: (
                execute(
                    conn, _TYPED_TOUCHED, {"touched_id": rows[1]["id"], "touched_body": "new"}
                ).rowcount
            )
        )
    assert inserted.rowcount == 2
    assert changed == 1
    # Only the statement handed to SQLAlchemy on purpose went through its execution.
    assert [s for s in seen if "typed" in s] == [
        "INSERT INTO typed (id, at, day, status, body, n) VALUES (?, ?, ?, ?, ?, ?)"
    ]
    async with engine.connect() as conn:
        stored = {r.id: r for r in (await conn.execute(select(_typed).order_by(_typed.c.n))).all()}
    # The rows the driver stored read back through SQLAlchemy as given...
    first = stored[rows[0]["id"]]
    assert tuple(first) == tuple(rows[0].values())
    assert first.at.tzinfo is not None and first.at == rows[0]["at"]
    assert stored[rows[1]["id"]].body == "new" and stored[rows[1]["id"]].day is None
    # ...stored as SQLAlchemy stores them (the same text in the file)...
    raw = sqlite3.connect(path)
    by_hand = raw.execute("SELECT at, id FROM typed WHERE n = 0").fetchone()
    by_orm = raw.execute("SELECT at, id FROM typed WHERE n = 5").fetchone()
    raw.close()
    assert by_hand[0] == by_orm[0]  # the same timestamp, as the same text
    assert (by_hand[1], by_orm[1]) == (rows[0]["id"].hex, by_sqlalchemy["id"].hex)
    # ...and the driver's reading is SQLAlchemy's, type for type.
    assert fast[0] == tuple(first)
    assert [type(v) for v in fast[0]] == [type(v) for v in first]
    assert fast[0].id == rows[0]["id"] and fast[0].at == at


async def test_a_constant_statement_missing_a_value_or_failing_behaves_as_through_sqlalchemy(
    typed,
):
    direct, engine, path = typed
    row = {"id": uuid.uuid4(), "at": datetime.now(UTC), "status": "x", "body": "b"}
    # No `n`, no `day`: SQLAlchemy runs it, and the column's default applies (the driver
    # would have stored NULL).
    await direct.transaction(lambda conn: execute(conn, _INSERT_TYPED, row))
    got = await direct.first(_TYPED_BY_ID, {"id": row["id"]})
    assert got is not None and got.n == 7 and got.day is None
    # A taken key is SQLAlchemy's IntegrityError, and the transaction is rolled back.
    other = {**row, "id": uuid.uuid4(), "n": 1, "day": None}

    def duplicate(conn: Connection) -> None:
        execute(conn, _INSERT_TYPED, other)
        execute(conn, _INSERT_TYPED, {**row, "n": 2, "day": None})

    with pytest.raises(IntegrityError):
        await direct.transaction(duplicate)
    assert await direct.first(_TYPED_BY_ID, {"id": other["id"]}) is None


async def test_a_reply_on_the_embedded_default_writes_its_rows_on_the_driver(client, user, backend):
    """The writes of a reply's start and end (`begin_reply`'s, the end's, the usage ledger's)
    do not go through SQLAlchemy's execution on SQLite, and what they store is what the API
    shows: the messages, complete, with the streamed text, and the day's usage."""
    if backend != "sqlite":
        pytest.skip("the driver path is SQLite's")
    with _sqlalchemy_statements() as seen:
        stream = await send(client, user.access_token, "Hello")
    assert stream.terminal.event == "done"
    written = [s for s in seen if s.lstrip().startswith(("INSERT", "UPDATE", "BEGIN"))]
    assert written == []
    items = await messages(client, user.access_token, stream.conversation_id)
    assert [(m["role"], m["status"], m["content"]) for m in items] == [
        ("user", "complete", "Hello"),
        ("assistant", "complete", stream.text),
    ]
    usage = await client.get("/api/v1/auth/me/usage", params={"days": 1}, headers=user.headers)
    assert usage.status_code == 200, usage.text
    assert usage.json()["items"][0]["replies"] == 1
