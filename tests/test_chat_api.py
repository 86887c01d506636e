"""SPEC section 5: conversations and messages, keyset pages, titles, ownership, validation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from alice.models import Conversation, Message
from alice.services.chat import make_title
from alice.services.pagination import encode_cursor
from tests.chatkit import CHAT


async def seed_conversations(app, user_id: uuid.UUID, count: int, same_time_every: int = 1):
    """Conversations straight into the database; every `same_time_every` share one timestamp,
    so ties are broken by id."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    convs = []
    for i in range(count):
        at = base + timedelta(seconds=i // same_time_every)
        convs.append(
            Conversation(
                id=uuid.uuid4(), user_id=user_id, title=f"c{i}", created_at=at, updated_at=at
            )
        )
    async with app.state.services.sessions() as s, s.begin():
        s.add_all(convs)
    return convs


async def user_id_of(client, headers) -> uuid.UUID:
    return uuid.UUID((await client.get("/api/v1/auth/me", headers=headers)).json()["id"])


async def walk(client, url: str, headers, limit: int) -> list[dict]:
    items: list[dict] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        resp = await client.get(url, params=params, headers=headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["items"]) <= limit
        items.extend(body["items"])
        cursor = body["next_cursor"]
        pages += 1
        assert pages < 100
        if cursor is None:
            return items


@pytest.mark.parametrize("tie", [1, 3])
async def test_conversation_walk_no_duplicate_no_gap_newest_first(app, client, user, tie):
    uid = await user_id_of(client, user.headers)
    convs = await seed_conversations(app, uid, 25, same_time_every=tie)
    items = await walk(client, f"{CHAT}/conversations", user.headers, 7)
    expected = sorted(convs, key=lambda c: (c.updated_at, c.id), reverse=True)
    assert [i["id"] for i in items] == [str(c.id) for c in expected]
    assert set(items[0]) == {"id", "title", "created_at", "updated_at", "model"}  # model: SPEC 15


async def test_message_walk_with_equal_timestamps(app, client, user):
    uid = await user_id_of(client, user.headers)
    (conv,) = await seed_conversations(app, uid, 1)
    at = datetime(2026, 2, 2, tzinfo=UTC)
    msgs = [
        Message(
            id=uuid.uuid4(),
            conversation_id=conv.id,
            role="user" if i % 2 == 0 else "assistant",
            content=f"m{i}",
            status="complete",
            token_count=0,
            created_at=at + timedelta(microseconds=i // 4),
        )
        for i in range(13)
    ]
    expected = sorted(msgs, key=lambda m: (m.created_at, m.id))
    for depth, m in enumerate(expected):  # one branch, in the order of the flat list
        m.parent_id = expected[depth - 1].id if depth else None
        m.depth = m.active_depth = depth
    async with app.state.services.sessions() as s, s.begin():
        s.add_all(msgs)
    items = await walk(client, f"{CHAT}/conversations/{conv.id}/messages", user.headers, 3)
    assert [i["id"] for i in items] == [str(m.id) for m in expected]
    assert items[0]["status"] == "complete" and items[0]["event_id"] is None
    assert [i["parent_id"] for i in items] == [None] + [i["id"] for i in items[:-1]]
    assert {(i["sibling_index"], i["sibling_count"]) for i in items} == {(0, 1)}


async def test_default_page_sizes(app, client, user):
    uid = await user_id_of(client, user.headers)
    await seed_conversations(app, uid, 21)
    body = (await client.get(f"{CHAT}/conversations", headers=user.headers)).json()
    assert len(body["items"]) == 20 and body["next_cursor"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "x"},
        {"cursor": "not-a-cursor"},
        {"cursor": "eyJ4IjoxfQ"},
        {"cursor": "' OR 1=1 --"},
        {"cursor": encode_cursor("m", datetime.now(UTC), uuid.uuid4())},
    ],
)
async def test_bad_page_parameters_are_422(client, user, params):
    resp = await client.get(f"{CHAT}/conversations", params=params, headers=user.headers)
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == "VALIDATION_ERROR"


async def test_someone_elses_conversation_is_404_on_every_route(app, client, user, make_user):
    other = await make_user()
    uid = await user_id_of(client, other.headers)
    (conv,) = await seed_conversations(app, uid, 1)
    h = user.headers
    base = f"{CHAT}/conversations/{conv.id}"
    answers = [
        await client.get(f"{base}/messages", headers=h),
        await client.get(f"{base}/stream", headers=h),
        await client.post(f"{base}/stop", headers=h),
        await client.patch(base, json={"title": "mine"}, headers=h),
        await client.delete(base, headers=h),
        await client.post(
            f"{CHAT}/message", json={"content": "hi", "conversation_id": str(conv.id)}, headers=h
        ),
    ]
    missing = await client.get(f"{CHAT}/conversations/{uuid.uuid4()}/messages", headers=h)
    for resp in [*answers, missing]:
        assert resp.status_code == 404, resp.text
        assert resp.json() == {
            "detail": "Conversation not found.",
            "code": "CONVERSATION_NOT_FOUND",
        }
    # And nothing happened to it.
    resp = await client.get(f"{CHAT}/conversations", headers=other.headers)
    assert [c["title"] for c in resp.json()["items"]] == ["c0"]


async def test_bad_conversation_id_is_422(client, user):
    resp = await client.get(f"{CHAT}/conversations/not-a-uuid/messages", headers=user.headers)
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"].startswith("path.")


async def test_chat_routes_require_a_token(client):
    for method, url in [
        ("GET", f"{CHAT}/conversations"),
        ("POST", f"{CHAT}/message"),
        ("GET", f"{CHAT}/conversations/{uuid.uuid4()}/messages"),
    ]:
        resp = await client.request(method, url, json={"content": "x"})
        assert resp.status_code == 401 and resp.json()["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize("content", ["", "   \n\t ", "x" * 32_001, None, 5])
async def test_invalid_content_is_422_and_stores_nothing(app, client, user, content):
    resp = await client.post(f"{CHAT}/message", json={"content": content}, headers=user.headers)
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "body.content"
    resp = await client.get(f"{CHAT}/conversations", headers=user.headers)
    assert resp.json()["items"] == []


async def test_content_at_the_limit_is_accepted(client, user):
    resp = await client.post(
        f"{CHAT}/message", json={"content": "y" * 32_000}, headers=user.headers
    )
    assert resp.status_code == 200


def test_title_folds_white_space_and_cuts_at_80():
    assert make_title("  Hello \n\n  world\t again ") == "Hello world again"
    assert make_title("word " * 40) == ("word " * 16).strip()[:80]
    assert len(make_title("x" * 200)) == 80


async def test_new_conversation_title_and_rename(client, user):
    resp = await client.post(
        f"{CHAT}/message", json={"content": "What is\n\nthe   answer?"}, headers=user.headers
    )
    assert resp.status_code == 200
    conv = (await client.get(f"{CHAT}/conversations", headers=user.headers)).json()["items"][0]
    assert conv["title"] == "What is the answer?"
    renamed = await client.patch(
        f"{CHAT}/conversations/{conv['id']}", json={"title": "  Answers  "}, headers=user.headers
    )
    assert renamed.status_code == 200 and renamed.json()["title"] == "Answers"
    for bad in ["", "   ", "t" * 201]:
        resp = await client.patch(
            f"{CHAT}/conversations/{conv['id']}", json={"title": bad}, headers=user.headers
        )
        assert resp.status_code == 422


async def test_new_message_moves_conversation_to_the_top(client, user):
    first = await client.post(f"{CHAT}/message", json={"content": "first"}, headers=user.headers)
    second = await client.post(f"{CHAT}/message", json={"content": "second"}, headers=user.headers)
    assert first.status_code == second.status_code == 200
    convs = (await client.get(f"{CHAT}/conversations", headers=user.headers)).json()["items"]
    assert [c["title"] for c in convs] == ["second", "first"]
    first_id = convs[1]["id"]
    again = await client.post(
        f"{CHAT}/message",
        json={"content": "more", "conversation_id": first_id},
        headers=user.headers,
    )
    assert again.status_code == 200
    convs = (await client.get(f"{CHAT}/conversations", headers=user.headers)).json()["items"]
    assert [c["title"] for c in convs] == ["first", "second"]
    assert convs[0]["updated_at"] > convs[0]["created_at"]


async def test_delete_removes_conversation_and_messages(app, client, user):
    await client.post(f"{CHAT}/message", json={"content": "bye"}, headers=user.headers)
    conv = (await client.get(f"{CHAT}/conversations", headers=user.headers)).json()["items"][0]
    resp = await client.delete(f"{CHAT}/conversations/{conv['id']}", headers=user.headers)
    assert resp.status_code == 204
    again = await client.get(f"{CHAT}/conversations/{conv['id']}/messages", headers=user.headers)
    assert again.status_code == 404
    from sqlalchemy import func, select

    async with app.state.services.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Message)) == 0
