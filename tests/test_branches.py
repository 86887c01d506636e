"""SPEC section 14: edit, regenerate, branch; the active branch paged; the AI's context is the
new message's ancestors only."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select

from alice.core.config import Settings
from alice.main import create_app
from alice.models import Conversation, Message
from tests.chatkit import (
    CHAT,
    Stream,
    background_send,
    eventually,
    messages,
    nonce,
    provider_request,
    read_stream,
    send,
)
from tests.conftest import PASSWORD, client_for
from tests.conftest import bearer as auth
from tests.fakes.anthropic_server import expected_text

# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
async def unlimited(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app (mock AI) without request limits, and a client: for tests making hundreds of
    requests."""
    app = create_app(settings.model_copy(update={"rate_limit_enabled": False}))
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=60):
        async with client_for(app) as client:
            yield app, client


async def edit(
    client: httpx.AsyncClient, token: str, conversation_id: Any, edit_of: Any, content: str
) -> Stream:
    return await read_stream(
        client,
        "POST",
        f"{CHAT}/message",
        headers=auth(token),
        json_body={
            "content": content,
            "conversation_id": str(conversation_id),
            "edit_of": str(edit_of),
        },
    )


async def regenerate(
    client: httpx.AsyncClient, token: str, conversation_id: Any, message_id: Any
) -> Stream:
    return await read_stream(
        client,
        "POST",
        f"{CHAT}/conversations/{conversation_id}/messages/{message_id}/regenerate",
        headers=auth(token),
    )


async def switch(
    client: httpx.AsyncClient, token: str, conversation_id: Any, message_id: Any
) -> httpx.Response:
    return await client.put(
        f"{CHAT}/conversations/{conversation_id}/branch",
        json={"message_id": str(message_id)},
        headers=auth(token),
    )


async def register(app: Any) -> str:
    """A new user's access token."""
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    return (await app.state.services.auth.register(email, PASSWORD, None)).access_token


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in items]


def contents(items: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in items]


async def user_id_of(client: httpx.AsyncClient, token: str) -> uuid.UUID:
    return uuid.UUID((await client.get("/api/v1/auth/me", headers=auth(token))).json()["id"])


class Tree:
    """Messages written straight into the database, each below a parent, with the branch
    fields the service keeps (a test builds shapes the API would take many requests for)."""

    def __init__(self, conversation_id: uuid.UUID) -> None:
        self.conversation_id = conversation_id
        self.rows: list[Message] = []
        self.at = datetime(2026, 3, 1, tzinfo=UTC)

    def add(self, parent: Message | None, content: str, role: str | None = None) -> Message:
        siblings = [r for r in self.rows if r.parent_id == (parent.id if parent else None)]
        depth = parent.depth + 1 if parent else 0
        self.at += timedelta(milliseconds=1)
        row = Message(
            id=uuid.uuid4(),
            conversation_id=self.conversation_id,
            role=role or ("user" if depth % 2 == 0 else "assistant"),
            content=content,
            status="complete",
            token_count=0,
            created_at=self.at,
            parent_id=parent.id if parent else None,
            depth=depth,
            sibling_index=len(siblings),
            active_depth=None,
        )
        self.rows.append(row)
        return row

    def chain(self, parent: Message | None, n: int, label: str) -> list[Message]:
        out = []
        for i in range(n):
            parent = self.add(parent, f"{label}{i}")
            out.append(parent)
        return out

    async def save(self, app: Any, user_id: uuid.UUID, active_leaf: Message) -> None:
        """Store it, the path to `active_leaf` marked as the active branch."""
        by_id = {r.id: r for r in self.rows}
        node: Message | None = active_leaf
        while node is not None:
            node.active_depth = node.depth
            node = by_id.get(node.parent_id) if node.parent_id else None
        conv = Conversation(
            id=self.conversation_id,
            user_id=user_id,
            title="tree",
            created_at=self.at,
            updated_at=self.at,
        )
        async with app.state.services.sessions() as s, s.begin():
            s.add(conv)
            await s.flush()
            for row in self.rows:  # parents first
                s.add(row)
                await s.flush()


# --- edit and regenerate: the provider sees the ancestors only -----------------------------


async def test_edit_and_regenerate_send_exactly_the_ancestors(live, fake_anthropic):
    user = await live.user()
    token = user.access_token
    tag = nonce()
    async with live.client() as client:
        q1 = await send(client, token, f"{tag} one [[tokens:2]]")
        cid = q1.conversation_id
        await send(client, token, f"{tag} two [[tokens:3]]", cid)
        q3 = await send(client, token, f"{tag} three [[tokens:1]]", cid)
        assert q3.terminal.event == "done"
        before = await messages(client, token, cid)
        assert len(before) == 6
        u1, a1, u2, a2, u3, _a3 = before

        # Edit the second question: the new one is its sibling, below the first answer.
        edited = await edit(client, token, cid, u2["id"], f"{tag} two again [[tokens:4]]")
        assert edited.status == 200 and edited.names[0] == "conversation"
        assert edited.data(0)["is_new"] is False
        assert edited.terminal.event == "done" and edited.text == expected_text(4)
        assert provider_request(fake_anthropic, f"{tag} two again").body["messages"] == [
            {"role": "user", "content": f"{tag} one [[tokens:2]]"},
            {"role": "assistant", "content": expected_text(2)},
            {"role": "user", "content": f"{tag} two again [[tokens:4]]"},
        ]
        after_edit = await messages(client, token, cid)
        assert ids(after_edit[:2]) == [u1["id"], a1["id"]]
        new_u2, new_a2 = after_edit[2:]
        assert new_u2["content"] == f"{tag} two again [[tokens:4]]"
        assert new_u2["parent_id"] == a1["id"] and new_a2["parent_id"] == new_u2["id"]
        assert (new_u2["sibling_index"], new_u2["sibling_count"]) == (1, 2)
        assert new_a2["id"] == str(edited.message_id)
        assert (new_a2["sibling_index"], new_a2["sibling_count"]) == (0, 1)
        assert (after_edit[1]["sibling_index"], after_edit[1]["sibling_count"]) == (0, 1)

        # Regenerate the first answer: the same context as it had (the first question only).
        count_before = len(fake_anthropic.requests_with(f"{tag} one"))
        regen = await regenerate(client, token, cid, a1["id"])
        assert regen.status == 200, regen.body
        assert regen.names[0] == "conversation" and regen.terminal.event == "done"
        first = regen.data(0)
        assert first["is_new"] is False and first["conversation_id"] == str(cid)
        assert first["message_id"] == str(regen.message_id) != a1["id"]
        done = json.loads(regen.terminal.data)
        assert done["status"] == "complete" and done["message_id"] == str(regen.message_id)
        asked = fake_anthropic.requests_with(f"{tag} one")
        assert len(asked) == count_before + 1
        assert asked[-1].body["messages"] == [
            {"role": "user", "content": f"{tag} one [[tokens:2]]"}
        ]
        after_regen = await messages(client, token, cid)
        assert ids(after_regen) == [u1["id"], str(regen.message_id)]
        assert after_regen[1]["parent_id"] == u1["id"]
        assert (after_regen[1]["sibling_index"], after_regen[1]["sibling_count"]) == (1, 2)

        # A message now goes below the new answer; its context is that branch only.
        nxt = await send(client, token, f"{tag} four [[tokens:1]]", cid)
        assert provider_request(fake_anthropic, f"{tag} four").body["messages"] == [
            {"role": "user", "content": f"{tag} one [[tokens:2]]"},
            {"role": "assistant", "content": expected_text(2)},
            {"role": "user", "content": f"{tag} four [[tokens:1]]"},
        ]
        assert nxt.terminal.event == "done"

        # Regenerating an answer on a side branch uses that branch's ancestors.
        regen_side = await regenerate(client, token, cid, a2["id"])
        assert regen_side.terminal.event == "done"
        assert fake_anthropic.requests_with(f"{tag} two [[tokens:3]]")[-1].body["messages"] == [
            {"role": "user", "content": f"{tag} one [[tokens:2]]"},
            {"role": "assistant", "content": expected_text(2)},
            {"role": "user", "content": f"{tag} two [[tokens:3]]"},
        ]
        side = await messages(client, token, cid)
        assert ids(side) == [u1["id"], a1["id"], u2["id"], str(regen_side.message_id)]
        assert (side[3]["sibling_index"], side[3]["sibling_count"]) == (1, 2)
        assert u3["parent_id"] == a2["id"]  # the third question stays below the older answer

        # Editing the first message makes another first message.
        root = await edit(client, token, cid, u1["id"], f"{tag} zero [[tokens:1]]")
        assert root.terminal.event == "done"
        assert provider_request(fake_anthropic, f"{tag} zero").body["messages"] == [
            {"role": "user", "content": f"{tag} zero [[tokens:1]]"}
        ]
        roots = await messages(client, token, cid)
        assert len(roots) == 2 and roots[0]["parent_id"] is None
        assert (roots[0]["sibling_index"], roots[0]["sibling_count"]) == (1, 2)


async def test_edit_and_regenerate_move_the_conversation_to_the_top(client, user):
    token = user.access_token
    older = await send(client, token, "older")
    newer = await send(client, token, "newer")
    assert newer.terminal.event == "done"
    items = await messages(client, token, older.conversation_id)
    regen = await regenerate(client, token, older.conversation_id, items[1]["id"])
    assert regen.status == 200
    convs = (await client.get(f"{CHAT}/conversations", headers=auth(token))).json()["items"]
    assert [c["title"] for c in convs] == ["older", "newer"]
    items = await messages(client, token, newer.conversation_id)
    edited = await edit(client, token, newer.conversation_id, items[0]["id"], "newer, edited")
    assert edited.status == 200
    convs = (await client.get(f"{CHAT}/conversations", headers=auth(token))).json()["items"]
    assert [c["title"] for c in convs] == ["newer", "older"]  # the title stays the first one's


async def test_regenerate_stores_no_user_message(client, user):
    token = user.access_token
    s = await send(client, token, "hello")
    items = await messages(client, token, s.conversation_id)
    regen = await regenerate(client, token, s.conversation_id, items[1]["id"])
    assert regen.terminal.event == "done"
    assert regen.names.count("conversation") == 1
    after = await messages(client, token, s.conversation_id)
    assert [m["role"] for m in after] == ["user", "assistant"]
    assert after[0] == items[0] and after[1]["id"] == str(regen.message_id)


# --- branch switching ----------------------------------------------------------------------


async def test_switch_to_a_middle_message_picks_the_newest_child_at_each_level(client, user):
    token = user.access_token
    s = await send(client, token, "u0")
    cid = s.conversation_id
    for text in ("u1", "u2"):
        await send(client, token, text, cid)
    u0, a0, u1, a1, u2, a2 = await messages(client, token, cid)
    # A second version of u1 (with its reply), then a second reply to the older u1.
    e = await edit(client, token, cid, u1["id"], "u1b")
    assert e.terminal.event == "done"
    _, _, u1b, a1b = await messages(client, token, cid)
    back = await switch(client, token, cid, u1["id"])
    assert back.status_code == 200
    # Below u1: its only child a1, then a1's only child u2, then a2.
    assert ids(back.json()["items"]) == ids([u0, a0, u1, a1, u2, a2])
    r = await regenerate(client, token, cid, a1["id"])
    assert r.terminal.event == "done"
    a1c = str(r.message_id)

    # To the first message: a0 (its only child), then u1b (newer than u1), then a1b.
    resp = await switch(client, token, cid, u0["id"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert ids(body["items"]) == ids([u0, a0, u1b, a1b]) and body["next_cursor"] is None
    assert body["items"] == await messages(client, token, cid)
    # To the older u1: its newest child is the regenerated reply, which has no children.
    resp = await switch(client, token, cid, u1["id"])
    assert ids(resp.json()["items"]) == [u0["id"], a0["id"], u1["id"], a1c]
    # To a1, a reply that is no longer the newest: below it, u2 and a2.
    resp = await switch(client, token, cid, a1["id"])
    items = resp.json()["items"]
    assert ids(items) == ids([u0, a0, u1, a1, u2, a2])
    assert [(m["sibling_index"], m["sibling_count"]) for m in items] == [
        (0, 1),
        (0, 1),
        (0, 2),
        (0, 2),
        (0, 1),
        (0, 1),
    ]
    # Switching to the message that is the leaf already changes nothing.
    again = await switch(client, token, cid, a2["id"])
    assert again.json() == resp.json()
    # A new message goes below the active leaf.
    nxt = await send(client, token, "u3", cid)
    assert nxt.terminal.event == "done"
    assert ids((await messages(client, token, cid))[:6]) == ids([u0, a0, u1, a1, u2, a2])


async def test_switch_answers_the_first_page_at_the_default_limit(app, client, user):
    uid = await user_id_of(client, user.access_token)
    tree = Tree(uuid.uuid4())
    main = tree.chain(None, 120, "m")
    side = tree.chain(main[9], 3, "s")
    await tree.save(app, uid, main[-1])
    resp = await switch(client, user.access_token, tree.conversation_id, main[9].id)
    body = resp.json()
    # Below main[9], main[10] (older) and side[0] (newer): the side branch wins.
    assert len(body["items"]) == 13 and body["next_cursor"] is None
    assert ids(body["items"]) == [str(m.id) for m in main[:10] + side]
    resp = await switch(client, user.access_token, tree.conversation_id, main[10].id)
    body = resp.json()
    assert ids(body["items"]) == [str(m.id) for m in main[:50]]
    assert body["next_cursor"]
    rest = await client.get(
        f"{CHAT}/conversations/{tree.conversation_id}/messages",
        params={"cursor": body["next_cursor"], "limit": 100},
        headers=auth(user.access_token),
    )
    assert ids(rest.json()["items"]) == [str(m.id) for m in main[50:]]


# --- the active branch paged ---------------------------------------------------------------


async def test_long_branch_with_side_branches_paged_with_every_limit(unlimited):
    """Each message of the active branch exactly once, in order, none from a side branch,
    at every limit from 1 to 100."""
    app, client = unlimited
    token = await register(app)
    uid = await user_id_of(client, token)
    tree = Tree(uuid.uuid4())
    main = tree.chain(None, 150, "m")
    sides: list[Message] = []
    for at in range(0, 149, 6):
        # Side branches beside main[at + 1] (older and newer ones), some deeper than main.
        length = 40 if at == 144 else 1 + at % 4
        sides += tree.chain(main[at], length, f"s{at}-")
    sides += tree.chain(None, 3, "other-root-")
    await tree.save(app, uid, sides[-4])  # a side branch first: the switch must move it all
    resp = await switch(client, token, tree.conversation_id, main[-1].id)
    assert resp.status_code == 200, resp.text

    expected = [str(m.id) for m in main]
    url = f"{CHAT}/conversations/{tree.conversation_id}/messages"
    for limit in range(1, 101):
        got: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            page = await client.get(url, params=params, headers=auth(token))
            assert page.status_code == 200, page.text
            body = page.json()
            assert 1 <= len(body["items"]) <= limit
            got += ids(body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
            assert len(body["items"]) == limit
        assert got == expected, limit


async def test_branch_cursor_rules(client, user):
    token = user.access_token
    s = await send(client, token, "a")
    url = f"{CHAT}/conversations/{s.conversation_id}/messages"
    for bad in ["x", "eyJ4IjoxfQ", "W10", "WzEsImIiLC0xLCIwMCJd"]:
        resp = await client.get(url, params={"cursor": bad}, headers=auth(token))
        assert resp.status_code == 422 and resp.json()["code"] == "VALIDATION_ERROR"
    first = await client.get(url, params={"limit": 1}, headers=auth(token))
    cursor = first.json()["next_cursor"]
    convs = await client.get(
        f"{CHAT}/conversations", params={"cursor": cursor}, headers=auth(token)
    )
    assert convs.status_code == 422  # a messages cursor is not a conversations cursor


# --- rules and errors ----------------------------------------------------------------------


async def test_message_not_found_wrong_role_and_someone_elses(unlimited):
    app, client = unlimited
    token = await register(app)
    s = await send(client, token, "mine")
    cid = s.conversation_id
    u, a = await messages(client, token, cid)
    other_conv = await send(client, token, "another of mine")
    ou, oa = await messages(client, token, other_conv.conversation_id)
    stranger = await register(app)
    theirs = await send(client, stranger, "theirs")
    tu, ta = await messages(client, stranger, theirs.conversation_id)

    not_found = {"detail": "Message not found.", "code": "MESSAGE_NOT_FOUND"}
    for foreign in (ou["id"], tu["id"], str(uuid.uuid4())):
        r = await edit(client, token, cid, foreign, "edit")
        assert (r.status, r.body) == (404, not_found)
    for foreign in (oa["id"], ta["id"], str(uuid.uuid4())):
        r = await regenerate(client, token, cid, foreign)
        assert (r.status, r.body) == (404, not_found)
        resp = await switch(client, token, cid, foreign)
        assert (resp.status_code, resp.json()) == (404, not_found)

    wrong = await edit(client, token, cid, a["id"], "edit a reply")
    assert wrong.status == 422 and wrong.body["code"] == "VALIDATION_ERROR"
    assert wrong.body["errors"][0]["field"] == "body.edit_of"
    wrong = await regenerate(client, token, cid, u["id"])
    assert wrong.status == 422 and wrong.body["errors"][0]["field"] == "path.message_id"
    no_conv = await read_stream(
        client,
        "POST",
        f"{CHAT}/message",
        headers=auth(token),
        json_body={"content": "x", "edit_of": u["id"]},
    )
    assert no_conv.status == 422 and no_conv.body["errors"][0]["field"] == "body.conversation_id"
    for bad in ("not-a-uuid", 5):
        r = await read_stream(
            client,
            "POST",
            f"{CHAT}/message",
            headers=auth(token),
            json_body={"content": "x", "conversation_id": str(cid), "edit_of": bad},
        )
        assert r.status == 422 and r.body["errors"][0]["field"] == "body.edit_of"
    resp = await client.put(f"{CHAT}/conversations/{cid}/branch", json={}, headers=auth(token))
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "body.message_id"

    # Someone else's conversation, or a missing one, is CONVERSATION_NOT_FOUND first.
    gone = {"detail": "Conversation not found.", "code": "CONVERSATION_NOT_FOUND"}
    for conv in (theirs.conversation_id, uuid.uuid4()):
        r = await regenerate(client, token, conv, ta["id"])
        assert (r.status, r.body) == (404, gone)
        resp = await switch(client, token, conv, tu["id"])
        assert (resp.status_code, resp.json()) == (404, gone)
        r = await edit(client, token, conv, tu["id"], "edit")
        assert (r.status, r.body) == (404, gone)
    # Nothing changed anywhere.
    assert await messages(client, token, cid) == [u, a]
    assert await messages(client, stranger, theirs.conversation_id) == [tu, ta]


async def test_edit_regenerate_and_branch_are_409_while_a_reply_runs(live):
    user = await live.user()
    token = user.access_token
    async with live.client() as client:
        s = await send(client, token, "first [[tokens:2]]")
        cid = s.conversation_id
        u, a = await messages(client, token, cid)
        reader, task = background_send(client, token, "slow [[tokens:300]] [[delay:20]]", cid)
        await eventually(lambda: len(reader.tokens) >= 2)
        busy = {
            "detail": "A reply is still being generated in this conversation.",
            "code": "GENERATION_IN_PROGRESS",
        }
        r = await regenerate(client, token, cid, a["id"])
        assert (r.status, r.body) == (409, busy)
        r = await edit(client, token, cid, u["id"], "edited")
        assert (r.status, r.body) == (409, busy)
        resp = await switch(client, token, cid, a["id"])
        assert (resp.status_code, resp.json()) == (409, busy)
        # The running reply itself cannot be regenerated either.
        r = await regenerate(client, token, cid, reader.message_id)
        assert (r.status, r.body) == (409, busy)
        stop = await client.post(f"{CHAT}/conversations/{cid}/stop", headers=auth(token))
        assert stop.status_code == 200
        await asyncio.wait_for(task, 5)
        items = await messages(client, token, cid)
        assert [m["content"] for m in items[:3]] == [
            "first [[tokens:2]]",
            expected_text(2),
            "slow [[tokens:300]] [[delay:20]]",
        ]
        assert len(items) == 4  # nothing of the refused requests was stored
        # Once it has ended, regenerate works again, also on the stopped reply.
        r = await regenerate(client, token, cid, items[3]["id"])
        assert r.status == 200


async def test_regenerate_counts_in_the_message_limit(make_settings, backend):
    from asgi_lifespan import LifespanManager

    from alice.main import create_app
    from tests.conftest import _create_schema, _drop_schema, client_for

    settings = make_settings(rate_limit_enabled=True)
    if backend == "postgres":
        await _create_schema(settings)
    try:
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=60):
            pair = await app.state.services.auth.register(
                "limit@example.com", "SecurePass123", None
            )
            token = pair.access_token
            async with client_for(app) as client:
                s = await send(client, token, "one")
                assert s.status == 200
                _, a = await messages(client, token, s.conversation_id)
                for _ in range(9):
                    r = await regenerate(client, token, s.conversation_id, a["id"])
                    assert r.status == 200 and r.terminal.event == "done"
                    assert r.headers["X-RateLimit-Limit"] == "10"
                refused = await regenerate(client, token, s.conversation_id, a["id"])
                assert refused.status == 429 and refused.body["code"] == "RATE_LIMIT_EXCEEDED"
                also = await send(client, token, "two", s.conversation_id)
                assert also.status == 429
    finally:
        if backend == "postgres":
            await _drop_schema(settings)


async def test_delete_removes_every_branch(app, client, user):
    token = user.access_token
    s = await send(client, token, "q")
    cid = s.conversation_id
    u, a = await messages(client, token, cid)
    await regenerate(client, token, cid, a["id"])
    await edit(client, token, cid, u["id"], "q2")
    await send(client, token, "q3", cid)
    keep = await send(client, token, "another conversation")
    async with app.state.services.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Message)) == 9
    resp = await client.delete(f"{CHAT}/conversations/{cid}", headers=auth(token))
    assert resp.status_code == 204
    async with app.state.services.sessions() as session:
        left = (await session.execute(select(Message.conversation_id))).scalars().all()
    assert set(left) == {keep.conversation_id} and len(left) == 2


# --- a reply that fails before any text ----------------------------------------------------


async def test_failed_regenerate_leaves_the_older_reply_on_the_branch(live, fake_anthropic):
    user = await live.user()
    token = user.access_token
    async with live.client() as client:
        uid = await user_id_of(client, token)
        tree = Tree(uuid.uuid4())
        u0, a0 = tree.chain(None, 2, "x")
        u1 = tree.add(a0, "fails now [[status:500]]")
        a1 = tree.add(u1, "an answer from before")
        await tree.save(app=live.app, user_id=uid, active_leaf=a1)
        r = await regenerate(client, token, tree.conversation_id, a1.id)
        assert r.names == ["conversation", "error"]
        assert json.loads(r.terminal.data)["code"] == "AI_SERVICE_UNAVAILABLE"
        items = await messages(client, token, tree.conversation_id)
        assert ids(items) == [str(m.id) for m in (u0, a0, u1, a1)]
        assert (items[3]["sibling_index"], items[3]["sibling_count"]) == (0, 1)
        # And the conversation goes on below it.
        nxt = await send(client, token, "next [[tokens:1]]", tree.conversation_id)
        assert nxt.terminal.event == "done"
        assert (await messages(client, token, tree.conversation_id))[4]["parent_id"] == str(a1.id)


async def test_failed_edit_reply_leaves_the_branch_at_the_new_message(live):
    user = await live.user()
    token = user.access_token
    async with live.client() as client:
        s = await send(client, token, "q [[tokens:2]]")
        cid = s.conversation_id
        u, a = await messages(client, token, cid)
        r = await edit(client, token, cid, u["id"], "q again [[status:500]]")
        assert r.names == ["conversation", "error"]
        items = await messages(client, token, cid)
        assert contents(items) == ["q again [[status:500]]"]
        assert (items[0]["sibling_index"], items[0]["sibling_count"]) == (1, 2)
        back = await switch(client, token, cid, u["id"])
        assert ids(back.json()["items"]) == [u["id"], a["id"]]


# --- budgets (SPEC section 15): a regenerate is a reply like any other ----------------------


async def test_regenerate_spends_the_daily_budget_and_is_refused_when_it_is_spent(settings):
    from tests.test_budgets import app_with, mock_cost, new_user

    cost = mock_cost("spend it")
    async with app_with(settings, user_daily_tokens=cost + 1) as (app, client):
        user = await new_user(app)
        first = await send(client, user.access_token, "spend it")
        assert first.terminal.event == "done"
        _, a = await messages(client, user.access_token, first.conversation_id)
        # One token left: the regenerate may start; it spends as the first reply did.
        again = await regenerate(client, user.access_token, first.conversation_id, a["id"])
        assert again.terminal.event == "done"
        usage = (await client.get("/api/v1/auth/me/usage", headers=user.headers)).json()
        assert usage["budget"]["spent_today"] == 2 * cost
        refused = await regenerate(client, user.access_token, first.conversation_id, a["id"])
        assert refused.status == 429 and refused.body["code"] == "QUOTA_EXCEEDED"
        assert "text/event-stream" not in refused.headers["content-type"]
        items = await messages(client, user.access_token, first.conversation_id)
        assert items[1]["sibling_count"] == 2  # the refused one stored nothing


async def test_regenerate_counts_in_the_running_replies_cap(settings, ai_settings, fake_anthropic):
    from tests.conftest import serve
    from tests.test_budgets import new_user

    s = settings.model_copy(
        update={**ai_settings, "user_max_running_replies": 1, "rate_limit_enabled": False}
    )
    async with serve(s) as (app, url), httpx.AsyncClient(base_url=url, timeout=30) as client:
        user = await new_user(app)
        token = user.access_token
        first = await send(client, token, "q [[tokens:2]]")
        _, a = await messages(client, token, first.conversation_id)
        reader, task = background_send(client, token, "other [[tokens:300]] [[delay:20]]")
        await eventually(lambda: len(reader.tokens) >= 1)
        refused = await regenerate(client, token, first.conversation_id, a["id"])
        assert refused.status == 429 and refused.body["code"] == "TOO_MANY_GENERATIONS"
        assert refused.headers["retry-after"] == "1"
        stop = await client.post(
            f"{CHAT}/conversations/{reader.conversation_id}/stop", headers=auth(token)
        )
        assert stop.status_code == 200
        await asyncio.wait_for(task, 5)
        allowed = await regenerate(client, token, first.conversation_id, a["id"])
        assert allowed.status == 200 and allowed.terminal.event == "done"
