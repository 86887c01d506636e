"""branches: messages form a tree with one active branch per conversation

Every existing conversation becomes a single branch: its messages, in their order
(created_at, id), each the child of the one before, all on the active branch.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 13:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"  # ids are per issue: 0004, 0005 and 0002 landed first
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROOTS_WHERE = sa.text("parent_id IS NULL")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # In place: a column with a REFERENCES clause may be added to a SQLite table (null
        # default). A batch copy would cost a copy of every message and drop the table's
        # triggers (the search index's, migration 0004).
        op.execute(
            "ALTER TABLE messages ADD COLUMN parent_id CHAR(32) "
            "CONSTRAINT fk_messages_parent_id_messages "
            "REFERENCES messages (id) ON DELETE CASCADE"
        )
    else:
        op.add_column("messages", sa.Column("parent_id", sa.Uuid(), nullable=True))
        op.create_foreign_key(
            op.f("fk_messages_parent_id_messages"),
            "messages",
            "messages",
            ["parent_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.add_column(
        "messages",
        sa.Column("depth", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "messages",
        sa.Column("sibling_index", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("messages", sa.Column("active_depth", sa.Integer(), nullable=True))

    # One chain per conversation, in the order the flat list had (UPDATE … FROM: SQLite 3.33+).
    op.execute(
        """
        UPDATE messages
        SET parent_id = chain.prev, depth = chain.n, active_depth = chain.n
        FROM (
            SELECT id,
                   lag(id) OVER w AS prev,
                   row_number() OVER w - 1 AS n
            FROM messages
            WINDOW w AS (PARTITION BY conversation_id ORDER BY created_at, id)
        ) AS chain
        WHERE messages.id = chain.id
        """
    )

    op.create_index(
        "uq_messages_active_depth", "messages", ["conversation_id", "active_depth"], unique=True
    )
    op.create_index("ix_messages_parent", "messages", ["parent_id", "sibling_index"])
    op.create_index(
        "ix_messages_roots",
        "messages",
        ["conversation_id", "sibling_index"],
        sqlite_where=_ROOTS_WHERE,
        postgresql_where=_ROOTS_WHERE,
    )


def downgrade() -> None:
    # Back to a flat list: every branch's messages stay, in creation order.
    op.drop_index(
        "ix_messages_roots",
        table_name="messages",
        sqlite_where=_ROOTS_WHERE,
        postgresql_where=_ROOTS_WHERE,
    )
    op.drop_index("ix_messages_parent", table_name="messages")
    op.drop_index("uq_messages_active_depth", table_name="messages")
    op.drop_column("messages", "active_depth")
    op.drop_column("messages", "sibling_index")
    op.drop_column("messages", "depth")
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # SQLite drops a column that takes part in a foreign key only by copying the table,
        # which drops the table's triggers with it: they are made again after the copy.
        triggers = (
            bind.execute(
                sa.text(
                    "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'messages'"
                )
            )
            .scalars()
            .all()
        )
        # The copy drops the old table, deleting its rows first: with the references between
        # them gone, that deletion cascades nowhere.
        op.execute("UPDATE messages SET parent_id = NULL")
        with op.batch_alter_table("messages", recreate="always") as batch_op:
            batch_op.drop_column("parent_id")
        for sql in triggers:
            op.execute(sql)
    else:
        op.drop_constraint(op.f("fk_messages_parent_id_messages"), "messages", type_="foreignkey")
        op.drop_column("messages", "parent_id")
