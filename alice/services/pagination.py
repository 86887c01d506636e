"""Opaque keyset cursors: the last item's sort key (µs since the epoch) and id."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime, timedelta

from alice.core.errors import ValidationFailedError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VERSION = 1


def encode_cursor(kind: str, at: datetime, item_id: uuid.UUID) -> str:
    micros = (at - _EPOCH) // timedelta(microseconds=1)
    raw = json.dumps([_VERSION, kind, micros, item_id.hex], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(kind: str, cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (timestamp, id) a cursor carries; a 422 when it does not decode or is another kind."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        version, got_kind, micros, hex_id = json.loads(base64.urlsafe_b64decode(padded))
        if version != _VERSION or got_kind != kind or not isinstance(micros, int):
            raise ValueError
        return _EPOCH + timedelta(microseconds=micros), uuid.UUID(hex=hex_id)
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
