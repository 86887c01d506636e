"""The reads of the hottest paths (alice.core.database.Reads): on SQLite they run on the event
loop through a connection of their own; they must still see every commit at once, and never
make the loop wait on a lock."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import Column, Integer, MetaData, Table, select

from alice.core.config import Settings
from alice.core.database import Reads, create_engine
from alice.main import create_app
from tests.conftest import TEST_SETTINGS, client_for

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
    # Two applications on one database, each with its own engine and reads, as two worker
    # processes have. B has read the user (it would answer from a stale snapshot or cache);
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


async def test_a_read_that_would_wait_for_a_lock_goes_to_the_engine_and_the_loop_runs_on(
    tmp_path,
):
    path = _wal_file(tmp_path)
    settings = Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}")
    engine = create_engine(settings)
    reads = Reads(engine)
    assert reads.inline
    # A writer holding the file exclusively (locking_mode=EXCLUSIVE keeps even WAL readers
    # out) until 0.3 s from now.
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA locking_mode=EXCLUSIVE")
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("INSERT INTO t VALUES (2)")
    loop = asyncio.get_running_loop()

    def release() -> None:
        writer.execute("COMMIT")
        writer.close()

    loop.call_later(0.3, release)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        rows = await reads.all(select(_t.c.x).order_by(_t.c.x))
        waited = time.monotonic() - started
    finally:
        ticking.cancel()
        reads.close()
        await engine.dispose()
    # The read waited for the lock (through aiosqlite's busy handler) and saw the commit...
    assert [r.x for r in rows] == [1, 2]
    assert waited >= 0.25
    # ...while the loop went on: a read waiting on the loop itself would have stopped it.
    assert ticks >= 10


async def test_an_in_memory_database_is_read_through_the_engine():
    settings = Settings(**TEST_SETTINGS, database_url="sqlite+aiosqlite://")
    engine = create_engine(settings)
    try:
        assert not Reads(engine).inline
    finally:
        await engine.dispose()


@pytest.mark.parametrize("statement", ["INSERT INTO t VALUES (3)", "DELETE FROM t"])
def test_the_inline_connection_cannot_write(tmp_path, statement):
    path = _wal_file(tmp_path)
    settings = Settings(**TEST_SETTINGS, database_url=f"sqlite+aiosqlite:///{path}")
    reads = Reads(create_engine(settings))
    try:
        with reads._sync_engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                raw.execute(statement)
    finally:
        reads.close()
