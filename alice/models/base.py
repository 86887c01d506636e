"""Declarative base and the column types every table shares."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase


def utcnow() -> datetime:
    return datetime.now(UTC)


_SQLITE_TEXT_LENGTH = len("2026-01-01 12:00:00.000000")


class UTCDateTime(TypeDecorator[datetime]):
    """A UTC timestamp with microseconds: timestamptz on PostgreSQL, ISO text on SQLite,
    always an aware datetime in Python."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        processor = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite":
            return processor

        # SQLite keeps the text SQLAlchemy wrote for it, UTC without an offset and always
        # with microseconds ("2026-01-01 12:00:00.000000"): read in one call, aware at once.
        # The general way (parse, then `replace(tzinfo=UTC)`) cost six times as much, and
        # the lists read it for every row.
        def process(value: Any) -> Any:
            if type(value) is str and len(value) == _SQLITE_TEXT_LENGTH:
                return datetime.fromisoformat(value + "+00:00")
            return processor(value) if processor else value

        return process

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def new_id() -> uuid.UUID:
    return uuid.uuid4()
