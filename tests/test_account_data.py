"""SPEC section 13: the account deleted with everything in it (running replies stopped
first), and exported as one streamed JSON attachment whose memory does not grow with it."""

from __future__ import annotations

import time
import tracemalloc
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, insert, select

from alice.core.security import utcnow
from alice.models import Conversation, Message, PasswordReset, RefreshToken, Session, User
from tests.chatkit import eventually, nonce, provider_request, send
from tests.conftest import PASSWORD, assert_error, bearer, client_for, serve

AUTH = "/api/v1/auth"


async def delete_me(c: httpx.AsyncClient, token: str, password: str = PASSWORD) -> httpx.Response:
    return await c.request(
        "DELETE", f"{AUTH}/me", json={"password": password}, headers=bearer(token)
    )


async def rows_of(app, user_id: uuid.UUID) -> dict[str, int]:
    async with app.state.services.sessions() as s:
        convs = select(Conversation.id).where(Conversation.user_id == user_id)
        return {
            "users": await s.scalar(select(func.count()).where(User.id == user_id)),
            "conversations": await s.scalar(
                select(func.count()).where(Conversation.user_id == user_id)
            ),
            "messages": await s.scalar(
                select(func.count()).where(Message.conversation_id.in_(convs))
            ),
            "sessions": await s.scalar(select(func.count()).where(Session.user_id == user_id)),
            "refresh_tokens": await s.scalar(
                select(func.count()).where(RefreshToken.user_id == user_id)
            ),
            "password_resets": await s.scalar(
                select(func.count()).where(PasswordReset.user_id == user_id)
            ),
        }


async def add_conversation(app, user_id: uuid.UUID, n_messages: int, title: str = "t") -> uuid.UUID:
    """A conversation with `n_messages` alternating messages, written straight to the
    database in one statement (fast enough for 100,000)."""
    conv_id, now = uuid.uuid4(), utcnow()
    async with app.state.services.sessions() as s, s.begin():
        await s.execute(
            insert(Conversation).values(
                id=conv_id, user_id=user_id, title=title, created_at=now, updated_at=now
            )
        )
        rows = [
            {
                "id": uuid.uuid4(),
                "conversation_id": conv_id,
                "role": "user" if i % 2 == 0 else "assistant",
                "content": f"message {i} " + "x" * 200,
                "status": "complete",
                "token_count": 0 if i % 2 == 0 else 50,
                "created_at": now + timedelta(microseconds=i),
            }
            for i in range(n_messages)
        ]
        for start in range(0, len(rows), 5000):
            await s.execute(insert(Message), rows[start : start + 5000])
    return conv_id


async def user_id_of(c: httpx.AsyncClient, token: str) -> uuid.UUID:
    return uuid.UUID((await c.get(f"{AUTH}/me", headers=bearer(token))).json()["id"])


# --- DELETE /me -------------------------------------------------------------------------------


async def test_delete_me_removes_everything_and_every_token_is_refused(app, client, make_user):
    user, bystander = await make_user(), await make_user()
    uid, other_id = (
        await user_id_of(client, user.access_token),
        await user_id_of(client, bystander.access_token),
    )
    await add_conversation(app, uid, 4)
    await add_conversation(app, other_id, 2)
    second = await client_for(app, "10.3.3.3").post(
        f"{AUTH}/login", json={"email": user.email, "password": PASSWORD}
    )
    await client.post(f"{AUTH}/password/forgot", json={"email": user.email})
    await app.state.services.recovery.drain()
    before = await rows_of(app, uid)
    assert before["password_resets"] == 1 and before["sessions"] == 2

    resp = await delete_me(client, user.access_token)
    assert resp.status_code == 204, resp.text

    assert set((await rows_of(app, uid)).values()) == {0}
    for token in (user.access_token, second.json()["access_token"]):
        assert_error(await client.get(f"{AUTH}/me", headers=bearer(token)), 401, "INVALID_TOKEN")
    for token in (user.refresh_token, second.json()["refresh_token"]):
        resp = await client.post(f"{AUTH}/refresh", json={"refresh_token": token})
        assert_error(resp, 401, "INVALID_TOKEN")
    login = await client.post(f"{AUTH}/login", json={"email": user.email, "password": PASSWORD})
    assert_error(login, 401, "AUTHENTICATION_FAILED")
    # Someone else's data is untouched.
    assert (await rows_of(app, other_id))["messages"] == 2
    # The e-mail registers again, as a new account that sees none of the old data.
    again = await client_for(app, "10.4.4.4").post(
        f"{AUTH}/register", json={"email": user.email, "password": PASSWORD}
    )
    assert again.status_code == 201
    token = again.json()["access_token"]
    assert await user_id_of(client, token) != uid
    convs = await client.get("/api/v1/chat/conversations", headers=bearer(token))
    assert convs.json()["items"] == []


async def test_delete_me_with_a_wrong_password_is_403_and_deletes_nothing(app, client, user):
    uid = await user_id_of(client, user.access_token)
    await add_conversation(app, uid, 2)
    assert_error(
        await delete_me(client, user.access_token, "Wrong-Pass-123"), 403, "INVALID_PASSWORD"
    )
    rows = await rows_of(app, uid)
    assert rows["users"] == 1 and rows["messages"] == 2
    assert (await client.get(f"{AUTH}/me", headers=user.headers)).status_code == 200


@pytest.mark.parametrize("body", [None, {}, {"password": 5}, {"password": "x" * 129}])
async def test_delete_me_bad_bodies_are_422(client, user, body):
    kwargs = {} if body is None else {"json": body}
    resp = await client.request("DELETE", f"{AUTH}/me", headers=user.headers, **kwargs)
    assert_error(resp, 422, "VALIDATION_ERROR")


async def test_delete_me_is_limited_to_five_a_minute(client, user):
    for _ in range(5):
        assert_error(
            await delete_me(client, user.access_token, "Wrong-Pass-1"), 403, "INVALID_PASSWORD"
        )
    assert_error(await delete_me(client, user.access_token), 429, "RATE_LIMIT_EXCEEDED")


async def test_delete_me_stops_running_replies_and_closes_the_provider(live, fake_anthropic):
    user = await live.user()
    tag = nonce()
    async with live.client() as client:
        s = await send(
            client, user.access_token, f"{tag} [[tokens:500]] [[delay:20]]", stop_after_tokens=2
        )
        asked = time.monotonic()
        resp = await delete_me(client, user.access_token)
        assert resp.status_code == 204, resp.text
        record = provider_request(fake_anthropic, tag)
        assert await fake_anthropic.until(lambda: record.disconnected, 1.0)
        assert record.disconnected_at - asked < 1.0
        generations = live.app.state.services.generations
        await eventually(lambda: not generations.is_local(s.message_id))
    async with live.app.state.services.sessions() as session:
        assert await session.get(Message, s.message_id) is None
        assert await session.get(Conversation, s.conversation_id) is None


# --- GET /me/export ---------------------------------------------------------------------------


async def test_export_is_the_whole_account_as_a_json_attachment(app, client, make_user):
    user, other = await make_user(), await make_user()
    uid = await user_id_of(client, user.access_token)
    first = await add_conversation(app, uid, 3, title="first")
    second = await add_conversation(app, uid, 0, title="empty")
    await add_conversation(app, await user_id_of(client, other.access_token), 2, title="other")
    resp = await client.get(f"{AUTH}/me/export", headers=user.headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["content-disposition"].startswith("attachment; filename=")
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert list(body) == ["user", "conversations", "exported_at"]
    assert body["user"]["id"] == str(uid) and body["user"]["email"] == user.email
    assert set(body["user"]) == {"id", "email", "display_name", "is_active", "created_at"}
    convs = {c["title"]: c for c in body["conversations"]}
    assert set(convs) == {"first", "empty"}
    assert convs["first"]["id"] == str(first) and convs["empty"]["id"] == str(second)
    assert [m["content"].split()[1] for m in convs["first"]["messages"]] == ["0", "1", "2"]
    assert convs["empty"]["messages"] == []
    assert {"id", "conversation_id", "role", "content", "status", "token_count"} <= set(
        convs["first"]["messages"][0]
    )
    # No secret of any kind: no password hash, token or token hash.
    text = resp.text
    async with app.state.services.sessions() as s:
        row = (await s.execute(select(User.password_hash).where(User.id == uid))).one()
        hashes = (
            (await s.execute(select(RefreshToken.token_hash).where(RefreshToken.user_id == uid)))
            .scalars()
            .all()
        )
    assert row.password_hash not in text and "argon2" not in text
    assert user.access_token not in text and user.refresh_token not in text
    for h in hashes:
        assert h.hex() not in text


async def test_export_needs_a_token_and_is_limited(client, user):
    assert_error(await client.get(f"{AUTH}/me/export"), 401, "UNAUTHORIZED")
    for _ in range(5):
        assert (await client.get(f"{AUTH}/me/export", headers=user.headers)).status_code == 200
    assert_error(
        await client.get(f"{AUTH}/me/export", headers=user.headers), 429, "RATE_LIMIT_EXCEEDED"
    )


async def _export_peak(url: str, token: str) -> tuple[int, int]:
    """(bytes downloaded, peak traced memory of the process while serving them)."""
    size = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            async with c.stream("GET", f"{AUTH}/me/export", headers=bearer(token)) as resp:
                assert resp.status_code == 200
                async for chunk in resp.aiter_raw():
                    size += len(chunk)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return size, peak


async def test_export_of_20000_messages_costs_no_more_memory_than_of_ten(settings):
    """Peak Python memory of the whole process (server and client) while the export streams
    over a real socket: a user with 20,000 messages (some 10 MB of JSON) against one with
    ten. Built in memory, the large one would need at least its own size; streamed, it holds
    one batch of messages (about 2 MB measured). 20,000, not more: traced, every message's
    allocations cost, and 100,000 took 70-90 s of the suite for the same proof."""
    async with serve(settings.model_copy(update={"rate_limit_enabled": False})) as (app, url):
        small = await app.state.services.auth.register(
            f"small-{uuid.uuid4().hex[:6]}@example.com", PASSWORD, None
        )
        large = await app.state.services.auth.register(
            f"large-{uuid.uuid4().hex[:6]}@example.com", PASSWORD, None
        )
        async with httpx.AsyncClient(base_url=url) as c:
            small_id = await user_id_of(c, small.access_token)
            large_id = await user_id_of(c, large.access_token)
        await add_conversation(app, small_id, 10)
        for _ in range(2):
            await add_conversation(app, large_id, 10_000)
        await _export_peak(url, small.access_token)  # warm-up: imports, caches, pools
        small_size, small_peak = await _export_peak(url, small.access_token)
        large_size, large_peak = await _export_peak(url, large.access_token)
    print(
        f"\nexport peak memory: 10 messages {small_peak / 1e6:.1f} MB ({small_size} B); "
        f"20,000 messages {large_peak / 1e6:.1f} MB ({large_size / 1e6:.1f} MB of JSON)"
    )
    assert large_size > 8_000_000
    assert large_peak < small_peak + 4_000_000, (small_peak, large_peak)
    assert large_peak < large_size / 3
