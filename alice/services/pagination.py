"""Opaque keyset cursors: the last item's sort key (µs since the epoch, or a position) and id."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime, timedelta

from alice.core.errors import ValidationFailedError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VERSION = 1
_POSITION_LIMIT = 2**31  # no branch is that deep; the database's integers end at 2**63


def encode_cursor(kind: str, at: datetime, item_id: uuid.UUID) -> str:
    micros = (at - _EPOCH) // timedelta(microseconds=1)
    raw = json.dumps([_VERSION, kind, micros, item_id.hex], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(kind: str, cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (timestamp, id) a cursor carries; a 422 when it does not decode or is another kind."""
    micros, item_id = _decode(kind, cursor)
    try:
        return _EPOCH + timedelta(microseconds=micros), item_id
    except OverflowError:
        raise ValidationFailedError("query.cursor", "The cursor is not valid.") from None


def _decode(kind: str, cursor: str) -> tuple[int, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        version, got_kind, key, hex_id = json.loads(base64.urlsafe_b64decode(padded))
        if version != _VERSION or got_kind != kind or type(key) is not int:
            raise ValueError
        return key, uuid.UUID(hex=hex_id)
    except (ValueError, TypeError, AttributeError, binascii.Error, OverflowError):
        raise ValidationFailedError("query.cursor", "The cursor is not valid.") from None


def encode_key_cursor(kind: str, key: int) -> str:
    """A cursor carrying one integer sort key (the search's newest-first key)."""
    raw = json.dumps([_VERSION, kind, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_key_cursor(kind: str, cursor: str) -> int:
    """The key a cursor of `encode_key_cursor` carries; a 422 when it does not decode."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        version, got_kind, key = json.loads(base64.urlsafe_b64decode(padded))
        if version != _VERSION or got_kind != kind or type(key) is not int or not 0 < key < 2**63:
            raise ValueError
        return key
    except (ValueError, TypeError, binascii.Error):
        raise ValidationFailedError("query.cursor", "The cursor is not valid.") from None


def encode_position_cursor(kind: str, position: int, item_id: uuid.UUID) -> str:
    """A cursor whose sort key is a whole number (a depth on a conversation's branch)."""
    raw = json.dumps([_VERSION, kind, position, item_id.hex], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_position_cursor(kind: str, cursor: str) -> tuple[int, uuid.UUID]:
    """The (position, id) an `encode_position_cursor` cursor carries; a 422 otherwise."""
    position, item_id = _decode(kind, cursor)
    if not 0 <= position < _POSITION_LIMIT:
        raise ValidationFailedError("query.cursor", "The cursor is not valid.")
    return position, item_id
