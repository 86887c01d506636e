"""Idempotent sends (SPEC section 6): `Idempotency-Key` on `POST /chat/message`, and what a
POST answered as a re-attach counts against."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from alice.core.security import utcnow
from alice.models import IdempotencyKey, Message
from tests.chatkit import CHAT, messages, send


def key_headers(key: str, **extra: str) -> dict[str, str]:
    return {"Idempotency-Key": key, **extra}


async def count_messages(app: Any) -> int:
    async with app.state.services.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)))


def ids(stream: Any) -> list[str]:
    return [e.id for e in stream.events]


async def test_the_same_key_and_body_again_is_a_reattach_of_that_reply(app, client, user):
    key = uuid.uuid4().hex
    first = await send(client, user.access_token, "Hello once", extra_headers=key_headers(key))
    assert first.status == 200 and first.names[-1] == "done"
    before = await count_messages(app)
    again = await send(client, user.access_token, "Hello once", extra_headers=key_headers(key))
    assert again.status == 200
    assert ids(again) == ids(first)  # the same reply, from its start
    assert [e.data for e in again.events] == [e.data for e in first.events]
    assert await count_messages(app) == before
    stored = await messages(client, user.access_token, first.conversation_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    # With Last-Event-ID: what follows it; after the terminal event, nothing.
    after = await send(
        client,
        user.access_token,
        "Hello once",
        extra_headers=key_headers(key, **{"Last-Event-ID": first.events[2].id}),
    )
    assert ids(after) == ids(first)[3:]
    last = await send(
        client,
        user.access_token,
        "Hello once",
        extra_headers=key_headers(key, **{"Last-Event-ID": first.events[-1].id}),
    )
    assert last.status == 204
    # To an existing conversation too: the retry is no 409 while the reply runs.
    key2 = uuid.uuid4().hex
    cid = first.conversation_id
    second = await send(client, user.access_token, "More", cid, extra_headers=key_headers(key2))
    again2 = await send(client, user.access_token, "More", cid, extra_headers=key_headers(key2))
    assert ids(again2) == ids(second) and second.status == 200
    stored = await messages(client, user.access_token, cid)
    assert [m["role"] for m in stored] == ["user", "assistant"] * 2


async def test_the_same_key_with_another_body_is_422(client, user):
    key = uuid.uuid4().hex
    first = await send(client, user.access_token, "Hello", extra_headers=key_headers(key))
    assert first.status == 200
    for content, cid in (("Hello!", None), ("Hello", first.conversation_id)):
        other = await send(client, user.access_token, content, cid, extra_headers=key_headers(key))
        assert other.status == 422
        assert other.body["errors"][0]["field"] == "header.Idempotency-Key"


async def test_a_key_is_one_users_and_lives_24_hours(app, client, user, make_user):
    key = uuid.uuid4().hex
    first = await send(client, user.access_token, "Hello", extra_headers=key_headers(key))
    other_user = await make_user()
    theirs = await send(client, other_user.access_token, "Hello", extra_headers=key_headers(key))
    assert theirs.message_id != first.message_id  # another user's key is theirs alone
    # 24 hours later the key is free: the same request sends a new message.
    async with app.state.services.sessions() as session, session.begin():
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.message_id == first.message_id)
            .values(created_at=utcnow() - timedelta(hours=24, seconds=1))
        )
    later = await send(client, user.access_token, "Hello", extra_headers=key_headers(key))
    assert later.status == 200 and later.message_id != first.message_id
    # ... and the key now names the new one.
    again = await send(client, user.access_token, "Hello", extra_headers=key_headers(key))
    assert again.message_id == later.message_id


async def test_the_key_header_is_1_to_255_visible_ascii_characters(client, user):
    bad: list[Any] = ["", " ", "a b", "x" * 256, "caf\u00e9".encode(), "tab\there", "\x7f"]
    for value in bad:
        resp = await send(client, user.access_token, "Hello", extra_headers=key_headers(value))
        assert resp.status == 422, repr(value)
        assert resp.body["errors"][0]["field"] == "header.Idempotency-Key", repr(value)
    good = "!" + "~" * 253 + "z"
    assert (
        await send(client, user.access_token, "Hi", extra_headers=key_headers(good))
    ).status == 200


async def test_simultaneous_requests_with_one_key_store_one_message(app, client, user):
    key = uuid.uuid4().hex
    before = await count_messages(app)
    streams = await asyncio.gather(
        *(
            send(client, user.access_token, "[[tokens:20]] at once", extra_headers=key_headers(key))
            for _ in range(5)
        )
    )
    assert [s.status for s in streams] == [200] * 5
    assert len({s.message_id for s in streams}) == 1
    assert all(ids(s) == ids(streams[0]) for s in streams)
    assert await count_messages(app) == before + 2


async def test_a_post_answered_as_a_reattach_counts_in_the_reattach_limit(client, user):
    token = user.access_token
    key = uuid.uuid4().hex
    first = await send(client, token, "Hello", extra_headers=key_headers(key))
    assert first.headers["x-ratelimit-limit"] == "10"
    assert first.headers["x-ratelimit-remaining"] == "9"
    # Twelve retries, by key and by Last-Event-ID: more than the message limit allows.
    for i in range(12):
        headers = key_headers(key) if i % 2 else {"Last-Event-ID": first.events[0].id}
        retry = await send(client, token, "Hello", extra_headers=headers)
        assert retry.status == 200, (i, retry.body)
        assert retry.headers["x-ratelimit-limit"] == "60"
    resp = await client.get(
        f"{CHAT}/conversations/{first.conversation_id}/stream",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.headers["x-ratelimit-remaining"] == str(60 - 12 - 1)
    # The message limit is untouched by them.
    new = await send(client, token, "A new message", first.conversation_id)
    assert new.status == 200 and new.headers["x-ratelimit-remaining"] == "8"


async def test_a_key_another_send_stored_first_is_taken_even_while_its_reply_runs(app, user):
    """The race's loser, at the service's seam: the key is stored first in the transaction,
    so the second send of a key finds it taken (not a 409 for the reply the first one runs)."""
    from alice.services.chat import IdempotencyClaim, KeyTakenError

    chat = app.state.services.chat
    me = await app.state.services.auth.authenticate(user.access_token)
    claim = IdempotencyClaim("k-1", "hash")
    start = await chat.begin_reply(me.id, "Hello", None, idempotency=claim)
    for conversation_id in (None, start.conversation_id):
        with pytest.raises(KeyTakenError) as taken:
            await chat.begin_reply(me.id, "Hello", conversation_id, idempotency=claim)
        assert taken.value.row.message_id == start.message_id
        assert taken.value.row.conversation_id == start.conversation_id
    assert await count_messages(app) == 2
