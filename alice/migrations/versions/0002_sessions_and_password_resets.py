"""sessions and password resets (SPEC section 13)

Revision ID: 0002
Revises: 0005
Create Date: 2026-12-07 13:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import alice.models.base


revision: str = "0002"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", alice.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", alice.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", alice.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", alice.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index("ix_sessions_user_created", "sessions", ["user_id", "created_at"])
    op.create_table(
        "password_resets",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", alice.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", alice.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_password_resets_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_password_resets")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_password_resets_token_hash")),
    )
    # Every family logged in before this revision becomes a session (without IP or user
    # agent, which were not kept), so its refresh tokens go on working.
    op.execute(
        """
        INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, revoked_at)
        SELECT family_id, user_id, MIN(created_at), MAX(created_at),
               MAX(family_expires_at),
               CASE WHEN COUNT(*) = COUNT(revoked_at) THEN MAX(revoked_at) END
        FROM refresh_tokens GROUP BY family_id, user_id
        """
    )


def downgrade() -> None:
    op.drop_table("password_resets")
    op.drop_index("ix_sessions_user_created", table_name="sessions")
    op.drop_table("sessions")
