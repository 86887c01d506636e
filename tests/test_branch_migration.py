"""Migration 0003 (SPEC section 14): a database made by the previous schema, with flat
conversations, becomes one where each conversation is a single active branch."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from alice.core.config import Settings
from alice.core.migrate import alembic_config
from alice.main import create_app
from tests.conftest import POSTGRES_URL, TEST_SETTINGS, _drop_schema, _plain_pg_url

BEFORE = "0004"  # the schema before branches (revision ids are per issue, not in order)

# The columns of the tables as the revision before branches had them, those the seed fills
# (the others have server defaults).
_meta = sa.MetaData()
_users = sa.Table(
    "users",
    _meta,
    sa.Column("id", sa.Uuid),
    sa.Column("email", sa.String),
    sa.Column("password_hash", sa.String),
    sa.Column("display_name", sa.String),
    sa.Column("is_active", sa.Boolean),
    sa.Column("token_version", sa.Integer),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)
_conversations = sa.Table(
    "conversations",
    _meta,
    sa.Column("id", sa.Uuid),
    sa.Column("user_id", sa.Uuid),
    sa.Column("title", sa.String),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)
_messages = sa.Table(
    "messages",
    _meta,
    sa.Column("id", sa.Uuid),
    sa.Column("conversation_id", sa.Uuid),
    sa.Column("role", sa.String),
    sa.Column("content", sa.Text),
    sa.Column("status", sa.String),
    sa.Column("token_count", sa.Integer),
    sa.Column("event_seq", sa.Integer),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)


@pytest.fixture
async def old_database(backend: str, tmp_path) -> Any:
    """Settings for an empty database of this backend, migrated to the previous schema."""
    base: dict[str, Any] = {**TEST_SETTINGS, "data_dir": tmp_path / "data"}
    if backend == "sqlite":
        settings = Settings(**base, database_url=f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    else:
        import asyncpg

        schema = f"test_mig_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(_plain_pg_url(POSTGRES_URL or ""))
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await conn.close()
        settings = Settings(**base, database_url=POSTGRES_URL, database_schema=schema)
    await asyncio.to_thread(command.upgrade, alembic_config(settings), BEFORE)
    try:
        yield settings
    finally:
        if backend == "postgres":
            await _drop_schema(settings)


async def _execute(settings: Settings, work) -> Any:  # type: ignore[no-untyped-def]
    from alice.core.database import create_engine

    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:
            return await work(conn)
    finally:
        await engine.dispose()


async def test_flat_conversations_become_single_active_branches(old_database):
    settings = old_database
    user_id = uuid.uuid4()
    start = datetime(2026, 5, 1, tzinfo=UTC)
    convs = {uuid.uuid4(): 7, uuid.uuid4(): 1, uuid.uuid4(): 0}
    rows: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for c, count in convs.items():
        rows[c] = []
        for i in range(count):
            rows[c].append(
                {
                    "id": uuid.uuid4(),
                    "conversation_id": c,
                    "role": "user" if i % 2 == 0 else "assistant",
                    "content": f"{c} #{i}",
                    "status": "complete",
                    "token_count": 0,
                    "event_seq": None,
                    "heartbeat_at": None,
                    # Two messages share each timestamp: the id breaks the tie, as the
                    # flat list's order did.
                    "created_at": start + timedelta(seconds=i // 2),
                }
            )

    async def seed(conn):  # type: ignore[no-untyped-def]
        await conn.execute(
            _users.insert(),
            [
                {
                    "id": user_id,
                    "email": "old@example.com",
                    "password_hash": "x",
                    "display_name": "old",
                    "is_active": True,
                    "token_version": 0,
                    "created_at": start,
                }
            ],
        )
        await conn.execute(
            _conversations.insert(),
            [
                {
                    "id": c,
                    "user_id": user_id,
                    "title": "t",
                    "created_at": start,
                    "updated_at": start,
                }
                for c in convs
            ],
        )
        flat = [r for rs in rows.values() for r in rs]
        await conn.execute(_messages.insert(), flat)

    if settings.is_sqlite:
        # SQLite keeps the text SQLAlchemy's UTCDateTime writes; seed through that type.
        from alice.models.base import UTCDateTime

        for col in ("created_at", "heartbeat_at"):
            _messages.c[col].type = UTCDateTime()
        for t in (_users, _conversations):
            t.c["created_at"].type = UTCDateTime()
        _conversations.c["updated_at"].type = UTCDateTime()
    await _execute(settings, seed)

    await asyncio.to_thread(command.upgrade, alembic_config(settings), "0003")

    async def read(conn):  # type: ignore[no-untyped-def]
        result = await conn.execute(
            sa.text(
                "SELECT id, conversation_id, parent_id, depth, active_depth, sibling_index "
                "FROM messages"
            )
        )
        return result.all()

    migrated = {
        uuid.UUID(str(r.id)) if not isinstance(r.id, uuid.UUID) else r.id: r
        for r in await _execute(settings, read)
    }
    for msgs in rows.values():
        ordered = sorted(msgs, key=lambda m: (m["created_at"], m["id"]))
        for depth, m in enumerate(ordered):
            got = migrated[m["id"]]
            parent = ordered[depth - 1]["id"] if depth else None
            got_parent = got.parent_id
            if got_parent is not None and not isinstance(got_parent, uuid.UUID):
                got_parent = uuid.UUID(got_parent)
            assert (got_parent, got.depth, got.active_depth, got.sibling_index) == (
                parent,
                depth,
                depth,
                0,
            )

    # The app on the migrated database pages each conversation as before, as one branch.
    await asyncio.to_thread(command.upgrade, alembic_config(settings), "head")
    from asgi_lifespan import LifespanManager

    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=60):
        services = app.state.services
        for c, msgs in rows.items():
            items, cursor = await services.chat.list_messages(user_id, c, 100, None)
            ordered = sorted(msgs, key=lambda m: (m["created_at"], m["id"]))
            assert [i.id for i in items] == [m["id"] for m in ordered]
            assert cursor is None

    # The search index's triggers on messages (migration 0004) are still there.
    assert await _execute(settings, _message_triggers) == 3

    # And back down: the columns go, the flat rows stay, and so do the triggers.
    await asyncio.to_thread(command.downgrade, alembic_config(settings), BEFORE)

    async def columns(conn):  # type: ignore[no-untyped-def]
        return await conn.run_sync(
            lambda sync: (
                [c["name"] for c in sa.inspect(sync).get_columns("messages")],
                sync.execute(sa.text("SELECT count(*) FROM messages")).scalar(),
            )
        )

    names, count = await _execute(settings, columns)
    assert "parent_id" not in names and "active_depth" not in names
    assert count == sum(convs.values())
    assert await _execute(settings, _message_triggers) == 3
    if settings.is_sqlite:
        # The table copy of the downgrade keeps the partial indexes partial.
        async def index_sql(conn):  # type: ignore[no-untyped-def]
            result = await conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE name = 'uq_messages_one_streaming'")
            )
            return result.scalar()

        assert "WHERE status = 'streaming'" in (await _execute(settings, index_sql))


async def _message_triggers(conn) -> int:  # type: ignore[no-untyped-def]
    if conn.dialect.name == "sqlite":
        query = (
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'messages'"
        )
    else:
        query = (
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.relname = 'messages' AND c.relnamespace = current_schema()::regnamespace "
            "AND NOT t.tgisinternal"
        )
    return int((await conn.execute(sa.text(query))).scalar())


async def test_messages_model_and_migrations_agree(settings):
    """The migrated `messages` table is what the model describes (an autogenerate finds
    nothing to change in it)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from alice.models import Base

    def table_of(diff) -> str | None:  # type: ignore[no-untyped-def]
        item = diff[0] if isinstance(diff, list) else diff  # modify_* come in lists
        if item[0] in ("add_column", "remove_column") or item[0].startswith("modify_"):
            return str(item[2])  # (op, schema, table name, …)
        obj = item[1]  # (op, Table | Index | Constraint)
        table = getattr(obj, "table", obj)
        return getattr(table, "name", None)

    def compare(sync_conn):  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(sync_conn, opts={"compare_server_default": True})
        diffs = [d for d in compare_metadata(context, Base.metadata) if table_of(d) == "messages"]
        fks = []
        if sync_conn.dialect.name == "sqlite":
            # SQLite reflects the name of a table-level constraint only; the column-level
            # one the migration adds in place is checked by what it does instead.
            diffs = [d for d in diffs if d[0] not in ("add_fk", "remove_fk")]
            fks = sync_conn.exec_driver_sql("PRAGMA foreign_key_list(messages)").all()
        return diffs, fks

    diffs, fks = await _execute(settings, lambda conn: conn.run_sync(compare))
    assert diffs == []
    if settings.is_sqlite:
        # (id, seq, table, from, to, on_update, on_delete, match)
        assert {(f[2], f[3], f[4], f[6]) for f in fks} == {
            ("conversations", "conversation_id", "id", "CASCADE"),
            ("messages", "parent_id", "id", "CASCADE"),
        }
