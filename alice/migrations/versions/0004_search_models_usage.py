"""search, models, usage (issue 14)

Full-text search: `search_docs` (one row per searchable message or title; its id is the
newest-first sort key) kept in step by triggers on `messages` and `conversations`, with the
words in an FTS5 table on SQLite and a GIN-indexed tsvector on PostgreSQL. Models and tokens:
`conversations.model`, `messages.model/input_tokens/output_tokens`. Usage: the ledger
`usage_daily`.

On SQLite, a later migration that copies `messages` or `conversations` to change them (Alembic
batch mode) drops their triggers with the old table: it must create them again
(`_SQLITE_TRIGGERS` below); tests/test_search.py fails when they are missing.

Revision ID: 0004
Revises: 0001
Create Date: 2026-12-07 13:20:00
"""

# The SQL below is assembled from this file's own constants, never from input.
# ruff: noqa: S608

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A message is searchable once it is not `streaming` (a running reply is indexed when it is
# saved at its end, not at every heartbeat) and has text.
_SQLITE_INDEXED = "{row}.status != 'streaming' AND {row}.content != ''"


def _sqlite_micros(col: str) -> str:
    # SQLAlchemy stores UTC timestamps on SQLite as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return f"(CAST(strftime('%s', {col}) AS INTEGER) * 1000000 + CAST(substr({col}, 21, 6) AS INTEGER))"


def _sqlite_key(col: str) -> str:
    """The doc's sort key: µs × 1024 (a signed 64-bit key has room until the year 2255),
    plus one more than the largest key of that µs."""
    base = f"({_sqlite_micros(col)} * 1024)"
    return (
        f"COALESCE((SELECT max(id) + 1 FROM search_docs WHERE id BETWEEN {base} "
        f"AND {base} + 1023), {base})"
    )


def _sqlite_add_message(row: str) -> str:
    return f"""
        INSERT INTO search_docs (id, user_id, conversation_id, message_id)
            SELECT {_sqlite_key(row + ".created_at")}, c.user_id, {row}.conversation_id, {row}.id
            FROM conversations c
            WHERE c.id = {row}.conversation_id AND {_SQLITE_INDEXED.format(row=row)};
        INSERT INTO search_fts (rowid, owner, body)
            SELECT id, 'u' || user_id, {row}.content FROM search_docs WHERE message_id = {row}.id
            AND {_SQLITE_INDEXED.format(row=row)};"""


def _sqlite_drop_message(row: str) -> str:
    # A contentless FTS5 row is deleted by giving exactly the values it was indexed with.
    return f"""
        INSERT INTO search_fts (search_fts, rowid, owner, body)
            SELECT 'delete', id, 'u' || user_id, {row}.content FROM search_docs
            WHERE message_id = {row}.id AND {_SQLITE_INDEXED.format(row=row)};
        DELETE FROM search_docs WHERE message_id = {row}.id;"""


def _sqlite_add_title(row: str) -> str:
    return f"""
        INSERT INTO search_docs (id, user_id, conversation_id, message_id)
            VALUES ({_sqlite_key(row + ".updated_at")}, {row}.user_id, {row}.id, NULL);
        INSERT INTO search_fts (rowid, owner, body)
            SELECT id, 'u' || user_id, {row}.title FROM search_docs
            WHERE conversation_id = {row}.id AND message_id IS NULL;"""


def _sqlite_drop_title(row: str) -> str:
    return f"""
        INSERT INTO search_fts (search_fts, rowid, owner, body)
            SELECT 'delete', id, 'u' || user_id, {row}.title FROM search_docs
            WHERE conversation_id = {row}.id AND message_id IS NULL;
        DELETE FROM search_docs WHERE conversation_id = {row}.id AND message_id IS NULL;"""


_SQLITE_TRIGGERS = {
    "messages_search_insert": f"AFTER INSERT ON messages BEGIN {_sqlite_add_message('new')} END",
    "messages_search_update": (
        "AFTER UPDATE OF content, status ON messages "
        "WHEN old.content IS NOT new.content OR old.status IS NOT new.status "
        f"BEGIN {_sqlite_drop_message('old')} {_sqlite_add_message('new')} END"
    ),
    "messages_search_delete": f"AFTER DELETE ON messages BEGIN {_sqlite_drop_message('old')} END",
    "conversations_search_insert": (
        f"AFTER INSERT ON conversations BEGIN {_sqlite_add_title('new')} END"
    ),
    "conversations_search_update": (
        "AFTER UPDATE OF title, updated_at ON conversations "
        "WHEN old.title IS NOT new.title OR old.updated_at IS NOT new.updated_at "
        f"BEGIN {_sqlite_drop_title('old')} {_sqlite_add_title('new')} END"
    ),
    "conversations_search_delete": (
        f"AFTER DELETE ON conversations BEGIN {_sqlite_drop_title('old')} END"
    ),
}

# PostgreSQL: words folded by `unaccent` then lower-cased (no stemming, no stop words: every
# word of a query counts, in any language). The extension is created once per database (it
# is trusted: the database owner may create it) wherever it already lives or in `public`.
_PG_SETUP = """
DO $$
DECLARE
    where_ text;
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public;
    EXCEPTION WHEN unique_violation OR duplicate_object THEN
        NULL;  -- another migration created it at the same moment
    END;
    SELECT n.nspname INTO where_ FROM pg_extension e
        JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'unaccent';
    CREATE TEXT SEARCH CONFIGURATION alice_search (COPY = pg_catalog.simple);
    EXECUTE format(
        'ALTER TEXT SEARCH CONFIGURATION alice_search ALTER MAPPING FOR '
        'word, hword, hword_part, numword, numhword, hword_numpart '
        'WITH %I.unaccent, simple', where_);
END $$
---
CREATE SEQUENCE search_docs_tiebreak
---
CREATE FUNCTION alice_search_key(at timestamptz) RETURNS bigint LANGUAGE sql AS $$
    SELECT (extract(epoch FROM at) * 1000000)::bigint * 1024
        + nextval('search_docs_tiebreak') % 1024
$$
---
CREATE FUNCTION alice_search_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM search_docs WHERE message_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.status <> 'streaming' AND NEW.content <> '' THEN
        INSERT INTO search_docs (id, user_id, conversation_id, message_id, tsv)
            SELECT alice_search_key(NEW.created_at), c.user_id, NEW.conversation_id, NEW.id,
                to_tsvector('alice_search', NEW.content)
            FROM conversations c WHERE c.id = NEW.conversation_id;
    END IF;
    RETURN NULL;
END $$
---
CREATE FUNCTION alice_search_conversation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM search_docs WHERE conversation_id = OLD.id;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM search_docs WHERE conversation_id = OLD.id AND message_id IS NULL;
    END IF;
    INSERT INTO search_docs (id, user_id, conversation_id, message_id, tsv)
        VALUES (alice_search_key(NEW.updated_at), NEW.user_id, NEW.id, NULL,
            to_tsvector('alice_search', NEW.title));
    RETURN NULL;
END $$
---
CREATE TRIGGER messages_search_insert AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION alice_search_message()
---
CREATE TRIGGER messages_search_update AFTER UPDATE OF content, status ON messages
    FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content
        OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION alice_search_message()
---
CREATE TRIGGER messages_search_delete AFTER DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION alice_search_message()
---
CREATE TRIGGER conversations_search_insert AFTER INSERT ON conversations
    FOR EACH ROW EXECUTE FUNCTION alice_search_conversation()
---
CREATE TRIGGER conversations_search_update AFTER UPDATE OF title, updated_at ON conversations
    FOR EACH ROW WHEN (OLD.title IS DISTINCT FROM NEW.title
        OR OLD.updated_at IS DISTINCT FROM NEW.updated_at)
    EXECUTE FUNCTION alice_search_conversation()
---
CREATE TRIGGER conversations_search_delete AFTER DELETE ON conversations
    FOR EACH ROW EXECUTE FUNCTION alice_search_conversation()
"""

_PG_BACKFILL = """
INSERT INTO search_docs (id, user_id, conversation_id, message_id, tsv)
    SELECT alice_search_key(m.created_at), c.user_id, m.conversation_id, m.id,
        to_tsvector('alice_search', m.content)
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.status <> 'streaming' AND m.content <> ''
---
INSERT INTO search_docs (id, user_id, conversation_id, message_id, tsv)
    SELECT alice_search_key(c.updated_at), c.user_id, c.id, NULL,
        to_tsvector('alice_search', c.title)
    FROM conversations c
"""


def _sqlite_backfill() -> list[str]:
    # Ties within one µs are numbered (messages from 0, titles from 512): the triggers'
    # max() + 1 would not see rows of the same INSERT … SELECT.
    m_micros = _sqlite_micros("m.created_at")
    c_micros = _sqlite_micros("c.updated_at")
    return [
        f"""INSERT INTO search_docs (id, user_id, conversation_id, message_id)
            SELECT {m_micros} * 1024 - 1 + row_number() OVER (PARTITION BY m.created_at),
                c.user_id, m.conversation_id, m.id
            FROM messages m JOIN conversations c ON c.id = m.conversation_id
            WHERE {_SQLITE_INDEXED.format(row="m")}""",
        f"""INSERT INTO search_docs (id, user_id, conversation_id, message_id)
            SELECT {c_micros} * 1024 + 511 + row_number() OVER (PARTITION BY c.updated_at),
                c.user_id, c.id, NULL
            FROM conversations c""",
        """INSERT INTO search_fts (rowid, owner, body)
            SELECT d.id, 'u' || d.user_id, m.content
            FROM search_docs d JOIN messages m ON m.id = d.message_id""",
        """INSERT INTO search_fts (rowid, owner, body)
            SELECT d.id, 'u' || d.user_id, c.title
            FROM search_docs d JOIN conversations c ON c.id = d.conversation_id
            WHERE d.message_id IS NULL""",
    ]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"

    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=100), nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("input_tokens", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("output_tokens", sa.Integer(), server_default="0", nullable=False)
        )

    op.create_table(
        "usage_daily",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("replies", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_usage_daily_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "day", name=op.f("pk_usage_daily")),
    )

    op.create_table(
        "search_docs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=True),
        sa.Column(
            "tsv", sa.Text().with_variant(postgresql.TSVECTOR(), "postgresql"), nullable=True
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_docs")),
    )
    op.create_index("ix_search_docs_message_id", "search_docs", ["message_id"])
    op.create_index(
        "ix_search_docs_conversation_id", "search_docs", ["conversation_id", "message_id"]
    )
    if sqlite:
        op.execute(
            "CREATE VIRTUAL TABLE search_fts USING fts5(owner, body, content='', "
            "tokenize='unicode61 remove_diacritics 2')"
        )
        for statement in _sqlite_backfill():
            op.execute(statement)
        for name, body in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
    else:
        op.create_index("ix_search_docs_user_id", "search_docs", ["user_id", "id"])
        op.create_index("ix_search_docs_tsv", "search_docs", ["tsv"], postgresql_using="gin")
        # One statement per call (asyncpg prepares each); "---" separates them.
        for statement in (_PG_SETUP + "\n---\n" + _PG_BACKFILL).split("\n---\n"):
            op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for name in _SQLITE_TRIGGERS:
        table = "messages" if name.startswith("messages") else "conversations"
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + ("" if sqlite else f" ON {table}"))
    if sqlite:
        op.execute("DROP TABLE IF EXISTS search_fts")
    else:
        op.execute("DROP FUNCTION IF EXISTS alice_search_message()")
        op.execute("DROP FUNCTION IF EXISTS alice_search_conversation()")
        op.execute("DROP FUNCTION IF EXISTS alice_search_key(timestamptz)")
        op.execute("DROP SEQUENCE IF EXISTS search_docs_tiebreak")
        op.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS alice_search")
    op.drop_table("search_docs")
    op.drop_table("usage_daily")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("output_tokens")
        batch_op.drop_column("input_tokens")
        batch_op.drop_column("model")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("model")
