"""The cursors' wire form: the compact JSON array `[version, kind, key(, id)]` in URL-safe
base64 without padding. A client may hold a cursor across a deploy, so the form is pinned
here against the JSON it has always been (`alice.services.pagination` writes it out by hand)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

from alice.services.pagination import (
    decode_cursor,
    decode_key_cursor,
    decode_position_cursor,
    encode_cursor,
    encode_key_cursor,
    encode_position_cursor,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def as_json(*fields: object) -> str:
    raw = json.dumps(list(fields), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_each_cursor_is_the_compact_json_it_always_was_and_decodes_back():
    ids = [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4()]
    times = [EPOCH, EPOCH - timedelta(microseconds=1), datetime(2026, 12, 8, 5, 1, 2, 345678, UTC)]
    for item_id in ids:
        for at in times:
            micros = (at - EPOCH) // timedelta(microseconds=1)
            cursor = encode_cursor("c", at, item_id)
            assert cursor == as_json(1, "c", micros, item_id.hex)
            assert decode_cursor("c", cursor) == (at, item_id)
        for position in (0, 7, 2**31 - 1):
            cursor = encode_position_cursor("b", position, item_id)
            assert cursor == as_json(1, "b", position, item_id.hex)
            assert decode_position_cursor("b", cursor) == (position, item_id)
    for key in (1, 1_765_000_000_123_456, 2**63 - 1):
        cursor = encode_key_cursor("s", key)
        assert cursor == as_json(1, "s", key)
        assert decode_key_cursor("s", cursor) == key
