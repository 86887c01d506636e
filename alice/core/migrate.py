"""Apply the Alembic migrations shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from alice.core.config import Settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: Settings | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if settings is not None:
        cfg.attributes["settings"] = settings
    return cfg


def upgrade(settings: Settings | None = None) -> None:
    """Bring the database to the newest revision (idempotent)."""
    command.upgrade(alembic_config(settings), "head")
