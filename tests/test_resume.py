"""SPEC sections 5 and 6: a reply that survives its connection. Re-attach (exact resume,
retention, refusals), the POST retry that is a re-attach, stop, delete mid-stream, the reaper,
and many streams on a small database pool. In process, on every backend; the test plan is
research/resumable.md section C."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from alice.core.security import utcnow
from alice.models import Conversation, Message, User
from alice.services.eventlog.base import Entry
from tests.chatkit import (
    CHAT,
    Stream,
    background_send,
    background_stream,
    eventually,
    messages,
    nonce,
    provider_request,
    reattach,
    send,
)
from tests.conftest import PASSWORD, serve
from tests.conftest import bearer as auth
from tests.fakes.anthropic_server import expected_text, token_text

# --- helpers --------------------------------------------------------------------------------


def seqs(s: Stream) -> list[int]:
    return [int(e.id.rsplit(":", 1)[1]) for e in s.events]


def triples(s: Stream) -> list[tuple[str, str, str]]:
    return [(e.id, e.event, e.data) for e in s.events]


async def stop_reply(
    client: httpx.AsyncClient, token: str, cid: Any, body: Any = None
) -> httpx.Response:
    kwargs: dict[str, Any] = {"headers": auth(token)}
    if body is not None:
        kwargs["json"] = body
    return await client.post(f"{CHAT}/conversations/{cid}/stop", **kwargs)


async def stream_get(
    client: httpx.AsyncClient, token: str, cid: Any, **headers: str
) -> httpx.Response:
    return await client.get(
        f"{CHAT}/conversations/{cid}/stream", headers={**auth(token), **headers}
    )


@dataclass
class Served:
    app: Any
    client: httpx.AsyncClient
    token: str


@asynccontextmanager
async def served(
    settings: Any, ai_settings: dict[str, Any], **overrides: Any
) -> AsyncIterator[Served]:
    """The app with the fake provider and `overrides`, on a loopback port, with one user."""
    s = settings.model_copy(update={**ai_settings, **overrides})
    async with serve(s) as (app, url):
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        pair = await app.state.services.auth.register(email, PASSWORD, None)
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            yield Served(app, client, pair.access_token)


# --- exact resume -----------------------------------------------------------------------------


async def test_resume_after_a_cut_gives_exactly_the_rest(live, fake_anthropic):
    user = await live.user()
    tag = nonce()
    async with live.client() as client:
        first = await send(
            client, user.access_token, f"{tag} [[tokens:30]] [[delay:20]]", stop_after_tokens=3
        )
        assert first.names == ["conversation", "token", "token", "token"]
        mid, cid = first.message_id, first.conversation_id
        cut = first.events[-1].id
        assert cut == f"{mid}:4"

        by_header = await reattach(client, user.access_token, cid, last_event_id=cut)
        assert by_header.status == 200
        assert by_header.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert by_header.names == ["token"] * 27 + ["done"]
        assert by_header.events[0].retry == 1000
        assert all(e.retry is None for e in by_header.events[1:])
        assert seqs(by_header) == list(range(5, 33))
        indexes = [t["index"] for t in first.tokens + by_header.tokens]
        assert indexes == list(range(30))
        assert first.text + by_header.text == expected_text(30)
        done = json.loads(by_header.terminal.data)
        assert done["status"] == "complete" and done["last_index"] == 29
        assert done["message_id"] == str(mid)

        by_query = await reattach(client, user.access_token, cid, after=cut)
        assert triples(by_query) == triples(by_header)
        assert by_query.events[0].retry == 1000

        # The header wins over ?after=.
        both = await reattach(client, user.access_token, cid, last_event_id=cut, after=f"{mid}:1")
        assert triples(both) == triples(by_header)
    assert provider_request(fake_anthropic, tag).reached_stop


async def test_reattach_without_cursor_repeats_the_post_events_from_seq_1(live):
    user = await live.user()
    async with live.client() as client:
        posted = await send(client, user.access_token, "[[tokens:6]]")
        again = await reattach(client, user.access_token, posted.conversation_id)
    assert again.status == 200
    assert triples(again) == triples(posted)
    assert seqs(again) == list(range(1, 9))
    assert again.events[0].retry == 1000
    assert all(e.retry is None for e in again.events[1:])


async def test_reattach_while_running_follows_live_to_done(live):
    user = await live.user()
    async with live.client() as client:
        first = await send(
            client, user.access_token, "[[tokens:40]] [[delay:20]]", stop_after_tokens=1
        )
        assert live.app.state.services.generations.is_local(first.message_id)
        rest = await reattach(
            client, user.access_token, first.conversation_id, last_event_id=first.events[-1].id
        )
    assert rest.terminal.event == "done"
    assert first.text + rest.text == expected_text(40)
    assert seqs(rest) == list(range(3, 43))


async def test_saved_text_plus_a_reattach_from_its_event_id_is_the_whole_reply(
    settings, ai_settings
):
    async with served(settings, ai_settings, generation_heartbeat_seconds=0.1) as srv:
        first = await send(srv.client, srv.token, "[[tokens:40]] [[delay:20]]", stop_after_tokens=2)
        cid = first.conversation_id

        async def saved() -> Any:
            reply = (await messages(srv.client, srv.token, cid))[1]
            return reply if reply["status"] == "streaming" and reply["content"] else None

        reply = await eventually(saved)
        assert reply["event_id"].startswith(f"{first.message_id}:")
        rest = await reattach(srv.client, srv.token, cid, last_event_id=reply["event_id"])
    assert rest.terminal.event == "done"
    assert reply["content"] + rest.text == expected_text(40)


# --- retention ---------------------------------------------------------------------------------


async def test_cursor_at_the_terminal_event_is_204(live):
    user = await live.user()
    async with live.client() as client:
        s = await send(client, user.access_token, "[[tokens:4]]")
        resp = await stream_get(
            client, user.access_token, s.conversation_id, **{"Last-Event-ID": s.terminal.id}
        )
        assert resp.status_code == 204 and resp.content == b""
        resp = await client.get(
            f"{CHAT}/conversations/{s.conversation_id}/stream",
            params={"after": s.terminal.id},
            headers=auth(user.access_token),
        )
        assert resp.status_code == 204


async def test_after_retention_one_snapshot_equal_to_the_stored_message(settings, ai_settings):
    async with served(settings, ai_settings, stream_retention_seconds=0.2) as srv:
        s = await send(srv.client, srv.token, "[[tokens:5]]")
        mid, cid = s.message_id, s.conversation_id
        log = srv.app.state.services.event_log
        await eventually(lambda: _gone(log, mid), timeout=5)
        stored = (await messages(srv.client, srv.token, cid))[1]
        assert stored["status"] == "complete" and stored["content"] == expected_text(5)
        for cursor in (f"{mid}:3", None):
            snap = await reattach(srv.client, srv.token, cid, last_event_id=cursor)
            assert snap.status == 200
            assert snap.names == ["snapshot"]
            assert json.loads(snap.events[0].data) == stored
            assert snap.events[0].id == s.terminal.id
            assert snap.events[0].retry == 1000
        # The terminal event is still "nothing follows".
        resp = await stream_get(srv.client, srv.token, cid, **{"Last-Event-ID": s.terminal.id})
        assert resp.status_code == 204


async def _gone(log: Any, mid: uuid.UUID) -> bool:
    return await log.state(mid) is None


async def test_no_reply_yet_and_a_reply_deleted_for_no_text_are_204(live):
    user = await live.user()
    async with live.client() as client:
        failed = await send(client, user.access_token, "[[status:500]]")
        assert failed.names == ["conversation", "error"]
        cid = failed.conversation_id
        assert [m["role"] for m in await messages(client, user.access_token, cid)] == ["user"]
        assert (await stream_get(client, user.access_token, cid)).status_code == 204
        for cursor in (failed.events[0].id, f"{failed.message_id}:0"):
            resp = await stream_get(client, user.access_token, cid, **{"Last-Event-ID": cursor})
            assert resp.status_code == 204, (cursor, resp.text)


# --- refusals ----------------------------------------------------------------------------------


async def test_unknown_reply_cursor_at_seq_0_is_422_as_at_any_seq(live):
    """An id naming no reply is a bad cursor at any seq: it was a 204 at seq 0 (SPEC 6)."""
    user = await live.user()
    async with live.client() as client:
        s = await send(client, user.access_token, "[[tokens:3]]")
        cid, unknown = s.conversation_id, uuid.uuid4()
        for seq in (0, 1, 5):
            cursor = f"{unknown}:{seq}"
            resp = await stream_get(client, user.access_token, cid, **{"Last-Event-ID": cursor})
            assert resp.status_code == 422, (seq, resp.text)
            assert resp.json()["errors"][0]["field"] == "header.Last-Event-ID"
            resp = await client.get(
                f"{CHAT}/conversations/{cid}/stream",
                params={"after": cursor},
                headers=auth(user.access_token),
            )
            assert resp.status_code == 422, (seq, resp.text)
            assert resp.json()["errors"][0]["field"] == "query.after"
        # A reply of this conversation at seq 0 is still its whole stream.
        resp = await stream_get(
            client, user.access_token, cid, **{"Last-Event-ID": f"{s.message_id}:0"}
        )
        assert resp.status_code == 200


async def test_someone_elses_conversation_is_404_for_stream_and_stop(live):
    owner, other = await live.user(), await live.user()
    async with live.client() as client:
        s = await send(client, owner.access_token, "[[tokens:3]]")
        cid = s.conversation_id
        for headers in ({}, {"Last-Event-ID": s.events[1].id}):
            resp = await stream_get(client, other.access_token, cid, **headers)
            assert resp.status_code == 404
            assert resp.json()["code"] == "CONVERSATION_NOT_FOUND"
        resp = await stop_reply(client, other.access_token, cid)
        assert resp.status_code == 404 and resp.json()["code"] == "CONVERSATION_NOT_FOUND"
        missing = uuid.uuid4()
        assert (await stream_get(client, owner.access_token, missing)).status_code == 404
        assert (await stop_reply(client, owner.access_token, missing)).status_code == 404
        # The owner still sees it.
        assert (await stream_get(client, owner.access_token, cid)).status_code == 200


async def test_malformed_cursor_is_422_in_header_and_query(live):
    user = await live.user()
    async with live.client() as client:
        s = await send(client, user.access_token, "[[tokens:3]]")
        cid, mid = s.conversation_id, s.message_id
        bad = ["nonsense", str(mid), f"{mid}:", f"{mid}:-1", f"{mid}:x", f"{mid}:1:2", "zz:3"]
        for cursor in bad:
            resp = await stream_get(client, user.access_token, cid, **{"Last-Event-ID": cursor})
            assert resp.status_code == 422, cursor
            body = resp.json()
            assert body["code"] == "VALIDATION_ERROR"
            assert body["errors"][0]["field"] == "header.Last-Event-ID"
            resp = await client.get(
                f"{CHAT}/conversations/{cid}/stream",
                params={"after": cursor},
                headers=auth(user.access_token),
            )
            assert resp.status_code == 422, cursor
            assert resp.json()["errors"][0]["field"] == "query.after"


async def test_cursor_of_another_conversation_or_unknown_reply_is_422(live):
    user, other = await live.user(), await live.user()
    async with live.client() as client:
        mine = await send(client, user.access_token, "[[tokens:3]]")
        mine2 = await send(client, user.access_token, "[[tokens:3]]")
        theirs = await send(client, other.access_token, "[[tokens:3]]")
        cid = mine.conversation_id
        user_message = (await messages(client, user.access_token, cid))[0]["id"]
        cursors = {
            "my other conversation's reply": f"{mine2.message_id}:2",
            "another user's reply": f"{theirs.message_id}:2",
            "unknown message": f"{uuid.uuid4()}:2",
            "a user message": f"{user_message}:1",
        }
        for what, cursor in cursors.items():
            resp = await stream_get(client, user.access_token, cid, **{"Last-Event-ID": cursor})
            assert resp.status_code == 422, what
            assert resp.json()["code"] == "VALIDATION_ERROR", what
            resp = await client.get(
                f"{CHAT}/conversations/{cid}/stream",
                params={"after": cursor},
                headers=auth(user.access_token),
            )
            assert resp.status_code == 422, what
            assert resp.json()["errors"][0]["field"] == "query.after", what


# --- a POST retry is a re-attach -----------------------------------------------------------------


async def test_post_with_last_event_id_of_own_reply_stores_nothing_and_streams_the_rest(
    live, fake_anthropic
):
    user = await live.user()
    tag = nonce()
    async with live.client() as client:
        first = await send(
            client, user.access_token, f"{tag} [[tokens:30]] [[delay:20]]", stop_after_tokens=3
        )
        cid = first.conversation_id
        before = await messages(client, user.access_token, cid)
        n_requests = len(fake_anthropic.requests)
        retry = await send(
            client,
            user.access_token,
            f"{tag} [[tokens:30]] [[delay:20]]",
            cid,
            extra_headers={"Last-Event-ID": first.events[-1].id},
        )
        assert retry.status == 200
        assert retry.names == ["token"] * 27 + ["done"]
        assert first.text + retry.text == expected_text(30)
        assert seqs(retry) == list(range(5, 33))
        after = await messages(client, user.access_token, cid)
    assert len(after) == len(before) == 2
    assert [m["id"] for m in after] == [m["id"] for m in before]
    assert len(fake_anthropic.requests) == n_requests


# --- a re-attach is capped ---------------------------------------------------------------------


async def test_reattach_is_closed_without_terminal_event_after_max_connection_seconds(
    settings, ai_settings
):
    async with served(settings, ai_settings, sse_max_connection_seconds=0.3) as srv:
        first = await send(
            srv.client, srv.token, "[[tokens:200]] [[delay:20]]", stop_after_tokens=1
        )
        started = time.monotonic()
        capped = await reattach(srv.client, srv.token, first.conversation_id)
        elapsed = time.monotonic() - started
        assert capped.status == 200
        assert capped.names[0] == "conversation"
        assert set(capped.names[1:]) <= {"token"}
        assert 0.25 <= elapsed < 2.0
        # The reply went on; the client re-attaches where it was cut.
        assert srv.app.state.services.generations.is_local(first.message_id)
        more = await reattach(
            srv.client,
            srv.token,
            first.conversation_id,
            last_event_id=capped.events[-1].id,
            stop_after_tokens=1,
        )
        assert more.tokens[0]["index"] == capped.tokens[-1]["index"] + 1
        resp = await stop_reply(srv.client, srv.token, first.conversation_id)
        assert resp.status_code == 200


# --- stop -----------------------------------------------------------------------------------


async def test_stop_mid_run_keeps_text_to_last_index_and_closes_the_provider(live, fake_anthropic):
    user = await live.user()
    tag = nonce()
    async with live.client() as client:
        reader, task = background_send(
            client, user.access_token, f"{tag} [[tokens:200]] [[delay:20]]"
        )
        await eventually(lambda: len(reader.tokens) >= 3)
        cid, mid = reader.conversation_id, reader.message_id
        asked = time.monotonic()
        resp = await stop_reply(client, user.access_token, cid, {"last_index": 2})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["id"] == str(mid) and body["role"] == "assistant"
        assert body["status"] == "stopped"
        assert body["content"] == expected_text(3)
        assert body["token_count"] == 3
        assert body["event_id"] is None

        record = provider_request(fake_anthropic, tag)
        assert await fake_anthropic.until(lambda: record.disconnected, 1.0)
        assert record.disconnected_at - asked < 1.0
        assert not record.reached_stop

        posted = await asyncio.wait_for(task, 5)
        assert posted.terminal.event == "done"
        done = json.loads(posted.terminal.data)
        assert done["status"] == "stopped" and done["last_index"] == 2
        assert done["message_id"] == str(mid)
        assert seqs(posted) == list(range(1, len(posted.events) + 1))

        # Every later reader gets the same end.
        again = await reattach(client, user.access_token, cid)
        assert triples(again) == triples(posted)

        resp = await stop_reply(client, user.access_token, cid, {"last_index": 0})
        assert resp.status_code == 204
        stored = (await messages(client, user.access_token, cid))[1]
    assert stored == body


async def test_stop_without_body_keeps_all_the_text(live):
    user = await live.user()
    async with live.client() as client:
        reader, task = background_send(client, user.access_token, "[[tokens:200]] [[delay:20]]")
        await eventually(lambda: len(reader.tokens) >= 2)
        resp = await stop_reply(client, user.access_token, reader.conversation_id)
        assert resp.status_code == 200
        posted = await asyncio.wait_for(task, 5)
    done = json.loads(posted.terminal.data)
    assert done["status"] == "stopped"
    n = done["last_index"] + 1
    assert n >= 2 and done["last_index"] == posted.tokens[-1]["index"]
    assert resp.json()["content"] == expected_text(n) == posted.text
    assert resp.json()["token_count"] == n


async def test_stop_before_the_first_token_keeps_an_empty_stopped_reply(live, fake_anthropic):
    user = await live.user()
    tag = nonce()
    async with live.client() as client:
        reader, task = background_send(client, user.access_token, f"{tag} [[hang]]")
        await eventually(lambda: reader.events)
        await fake_anthropic.until(
            lambda: any(tag in r.last_user_text for r in fake_anthropic.requests)
        )
        resp = await stop_reply(client, user.access_token, reader.conversation_id)
        assert resp.status_code == 200
        assert resp.json()["status"] == "stopped" and resp.json()["content"] == ""
        posted = await asyncio.wait_for(task, 5)
        assert posted.names == ["conversation", "done"]
        assert json.loads(posted.terminal.data)["last_index"] == -1
        # The empty reply is left out of the next context (whose joined turn hangs too).
        tag2 = nonce()
        follow, task = background_send(client, user.access_token, tag2, reader.conversation_id)
        await eventually(lambda: follow.events)
        assert await fake_anthropic.until(
            lambda: any(tag2 in r.last_user_text for r in fake_anthropic.requests)
        )
        assert (
            await stop_reply(client, user.access_token, reader.conversation_id)
        ).status_code == 200
        await asyncio.wait_for(task, 5)
    assert provider_request(fake_anthropic, tag2).body["messages"] == [
        {"role": "user", "content": f"{tag} [[hang]]\n\n{tag2}"}
    ]


async def test_stop_with_nothing_running_is_204(live):
    user = await live.user()
    async with live.client() as client:
        s = await send(client, user.access_token, "[[tokens:2]]")
        resp = await stop_reply(client, user.access_token, s.conversation_id)
        assert resp.status_code == 204 and resp.content == b""
        resp = await stop_reply(client, user.access_token, s.conversation_id, {"last_index": 0})
        assert resp.status_code == 204
        stored = (await messages(client, user.access_token, s.conversation_id))[1]
    assert stored["status"] == "complete" and stored["content"] == expected_text(2)


async def test_stop_body_is_validated(live):
    user = await live.user()
    async with live.client() as client:
        s = await send(client, user.access_token, "[[tokens:2]]")
        resp = await stop_reply(client, user.access_token, s.conversation_id, {"last_index": -2})
        assert resp.status_code == 422 and resp.json()["code"] == "VALIDATION_ERROR"


async def test_delete_mid_stream_closes_the_provider_and_leaves_no_message(live, fake_anthropic):
    user = await live.user()
    tag = nonce()
    async with live.client() as client:
        s = await send(
            client,
            user.access_token,
            f"{tag} [[tokens:200]] [[delay:20]]",
            stop_after_tokens=2,
        )
        asked = time.monotonic()
        resp = await client.delete(
            f"{CHAT}/conversations/{s.conversation_id}", headers=auth(user.access_token)
        )
        assert resp.status_code == 204
        record = provider_request(fake_anthropic, tag)
        assert await fake_anthropic.until(lambda: record.disconnected, 1.0)
        assert record.disconnected_at - asked < 1.0
        generations = live.app.state.services.generations
        await eventually(lambda: not generations.is_local(s.message_id))
        resp = await client.get(
            f"{CHAT}/conversations/{s.conversation_id}/messages", headers=auth(user.access_token)
        )
        assert resp.status_code == 404
    async with live.app.state.services.sessions() as session:
        assert await session.get(Message, s.message_id) is None
        count = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.conversation_id == s.conversation_id)
        )
    assert count == 0


# --- the reaper ------------------------------------------------------------------------------


async def _user_id(client: httpx.AsyncClient, token: str) -> uuid.UUID:
    resp = await client.get("/api/v1/auth/me", headers=auth(token))
    assert resp.status_code == 200
    return uuid.UUID(resp.json()["id"])


async def _streaming_row(
    app: Any, user_id: uuid.UUID, content: str, event_seq: int, age_seconds: float
) -> Message:
    """A conversation whose reply is `streaming`, last saved `age_seconds` ago."""
    now = utcnow()
    conv = Conversation(
        id=uuid.uuid4(), user_id=user_id, title="reaper", created_at=now, updated_at=now
    )
    row = Message(
        id=uuid.uuid4(),
        conversation_id=conv.id,
        role="assistant",
        content=content,
        status="streaming",
        token_count=0,
        event_seq=event_seq,
        heartbeat_at=now - timedelta(seconds=age_seconds),
        created_at=now,
        active_depth=0,  # the conversation's only message, on its active branch
    )
    async with app.state.services.sessions() as session, session.begin():
        session.add(conv)
        await session.flush()
        session.add(row)
    return row


async def test_reaper_marks_stale_replies_incomplete_or_deletes_them(live):
    user = await live.user()
    app = live.app
    beat = app.state.services.settings.generation_heartbeat_seconds
    stale_age = 6 * beat + 60
    async with live.client() as client:
        uid = await _user_id(client, user.access_token)
    stale = await _streaming_row(app, uid, expected_text(2), 3, stale_age)
    empty = await _streaming_row(app, uid, "", 1, stale_age)
    fresh = await _streaming_row(app, uid, expected_text(1), 2, 1)
    reaped = await app.state.services.generations.reap(stale_only=True)
    assert reaped == 2
    async with app.state.services.sessions() as session:
        kept = await session.get(Message, stale.id)
        gone = await session.get(Message, empty.id)
        alive = await session.get(Message, fresh.id)
    assert kept.status == "incomplete"
    assert kept.content == expected_text(2) and kept.token_count == 2
    assert gone is None
    assert alive.status == "streaming" and alive.content == expected_text(1)
    # A second round finds nothing more to do.
    assert await app.state.services.generations.reap(stale_only=True) == 0


async def test_reader_of_a_reaped_reply_gets_generation_lost(live, backend):
    """The reply's process is gone but its log is there (its events in Redis; in memory, the
    log of a reply no run of this process owns): a re-attached reader waits, then the reaper
    ends it with `error GENERATION_LOST`."""
    user = await live.user()
    app = live.app
    services = app.state.services
    beat = services.settings.generation_heartbeat_seconds
    async with live.client() as client:
        uid = await _user_id(client, user.access_token)
        row = await _streaming_row(app, uid, expected_text(2), 3, 6 * beat + 60)
        dead = services.event_log
        if backend == "postgres":
            from alice.services.eventlog.redis import RedisEventLog

            dead = RedisEventLog(
                services.settings.redis_url,
                retention_seconds=5,
                max_events=100,
                ttl_seconds=60,
                key_prefix=f"{services.settings.redis_prefix}:gen:",
                owner_id="dead-process",
            )
            await dead.start()
        mid = row.id
        await dead.create(mid, {"conversation_id": str(row.conversation_id), "user_id": str(uid)})
        conv = {"conversation_id": str(row.conversation_id), "is_new": True, "message_id": str(mid)}
        dead.append(mid, Entry(1, "conversation", json.dumps(conv)))
        for i in range(3):
            dead.append(
                mid, Entry(i + 2, "token", json.dumps({"content": token_text(i), "index": i}))
            )
        if dead is not services.event_log:
            assert await dead.flush(2)
            await dead.close()  # the process dies: nothing more is written

        reader, task = background_stream(
            client,
            "GET",
            f"{CHAT}/conversations/{row.conversation_id}/stream",
            headers={**auth(user.access_token), "Last-Event-ID": f"{mid}:1"},
        )
        await eventually(lambda: len(reader.tokens) == 3)
        assert await services.generations.reap(stale_only=True) == 1
        lost = await asyncio.wait_for(task, 5)
        assert lost.names == ["token"] * 3 + ["error"]
        assert json.loads(lost.terminal.data)["code"] == "GENERATION_LOST"
        assert seqs(lost) == [2, 3, 4, 5]
        # A reader that comes later replays to the same end.
        later = await reattach(client, user.access_token, row.conversation_id)
        assert later.names == ["conversation"] + ["token"] * 3 + ["error"]
        stored = (await messages(client, user.access_token, row.conversation_id))[0]
    assert stored["status"] == "incomplete" and stored["content"] == expected_text(2)


async def test_start_up_sweep_repairs_a_crash_when_alone(settings):
    """Without Redis a process is alone: every `streaming` row at its start is a crash's
    leftover, however fresh its heartbeat."""
    from asgi_lifespan import LifespanManager

    from alice.main import create_app

    first = create_app(settings)
    async with LifespanManager(first):
        email = f"s-{uuid.uuid4().hex[:8]}@example.com"
        await first.state.services.auth.register(email, PASSWORD, None)
        async with first.state.services.sessions() as session:
            user_id = await session.scalar(select(User.id).where(User.email == email))
        with_text = await _streaming_row(first, user_id, expected_text(3), 4, 0)
        empty = await _streaming_row(first, user_id, "", 1, 0)
    alone = create_app(settings.model_copy(update={"redis_url": None}))
    async with LifespanManager(alone):
        async with alone.state.services.sessions() as session:
            kept = await session.get(Message, with_text.id)
            gone = await session.get(Message, empty.id)
    assert kept.status == "incomplete" and kept.content == expected_text(3)
    assert gone is None


# --- no database connection held by open streams -----------------------------------------------


async def test_forty_replies_and_forty_readers_on_a_pool_of_five(backend, settings, ai_settings):
    if backend == "sqlite":
        pytest.skip("the connection pool is PostgreSQL's")
    async with served(settings, ai_settings, database_pool_size=5, rate_limit_enabled=False) as srv:
        posts = [
            # 4 s replies: long enough that the streams are all still open while /auth/me is
            # asked below, however fast the replies start.
            background_send(srv.client, srv.token, "[[tokens:80]] [[delay:50]]")
            for _ in range(40)
        ]
        readers: list[tuple[Stream, asyncio.Task[Stream]]] = []
        for post, _ in posts:
            await eventually(lambda post=post: post.events, timeout=10)
            readers.append(
                background_stream(
                    srv.client,
                    "GET",
                    f"{CHAT}/conversations/{post.conversation_id}/stream",
                    headers=auth(srv.token),
                )
            )
        tasks = [t for _, t in posts] + [t for _, t in readers]
        slowest = 0.0
        answers = 0
        while not all(t.done() for t in tasks):
            started = time.monotonic()
            resp = await srv.client.get("/api/v1/auth/me", headers=auth(srv.token))
            slowest = max(slowest, time.monotonic() - started)
            assert resp.status_code == 200
            answers += 1
            await asyncio.sleep(0.05)
        results = await asyncio.gather(*tasks)
    assert answers >= 5 and slowest < 3.0
    for s in results:
        assert s.status == 200
        assert s.terminal.event == "done", s.names[-3:]
        assert s.text == expected_text(80)
    for (post, _), (reader, _) in zip(posts, readers, strict=True):
        assert triples(reader) == triples(post)


# --- stop across processes when the pub/sub message is lost --------------------------------------


async def test_stop_through_another_app_lands_when_pubsub_is_lost_mocked(
    backend, settings, ai_settings, fake_anthropic, monkeypatch
):
    if backend == "sqlite":
        pytest.skip("two processes share their logs through Redis")
    s = settings.model_copy(update=ai_settings)
    async with serve(s) as (app_a, url_a), serve(s) as (app_b, url_b):
        pair = await app_a.state.services.auth.register(
            f"u-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
        )
        published: list[str] = []

        async def lost(channel: str, message: str) -> int:
            published.append(message)
            return 0

        monkeypatch.setattr(app_b.state.services.event_log.redis, "publish", lost)
        tag = nonce()
        async with (
            httpx.AsyncClient(base_url=url_a, timeout=30) as a,
            httpx.AsyncClient(base_url=url_b, timeout=30) as b,
        ):
            reader, task = background_send(
                a, pair.access_token, f"{tag} [[tokens:300]] [[delay:20]]"
            )
            await eventually(lambda: len(reader.tokens) >= 3)
            mid = reader.message_id
            assert app_a.state.services.generations.is_local(mid)
            assert not app_b.state.services.generations.is_local(mid)
            asked = time.monotonic()
            resp = await stop_reply(b, pair.access_token, reader.conversation_id, {"last_index": 2})
            assert resp.status_code == 200, resp.text
            assert resp.json()["status"] == "stopped"
            assert resp.json()["content"] == expected_text(3)
            assert published and json.loads(published[0])["stop"] == str(mid)
            record = provider_request(fake_anthropic, tag)
            assert await fake_anthropic.until(lambda: record.disconnected, 2.0)
            assert record.disconnected_at - asked < 1.5
            posted = await asyncio.wait_for(task, 5)
    done = json.loads(posted.terminal.data)
    assert done["status"] == "stopped" and done["last_index"] == 2


async def test_redis_down_the_owner_streams_on_and_another_process_answers_503(
    backend, settings, ai_settings
):
    if backend == "sqlite":
        pytest.skip("two processes share their logs through Redis")
    up = settings.model_copy(update=ai_settings)
    down = up.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    async with serve(down) as (app_a, url_a), serve(up) as (_app_b, url_b):
        pair = await app_a.state.services.auth.register(
            f"u-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
        )
        async with (
            httpx.AsyncClient(base_url=url_a, timeout=30) as a,
            httpx.AsyncClient(base_url=url_b, timeout=30) as b,
        ):
            reader, task = background_send(a, pair.access_token, "[[tokens:40]] [[delay:20]]")
            await eventually(lambda: len(reader.tokens) >= 2)
            resp = await stream_get(b, pair.access_token, reader.conversation_id)
            assert resp.status_code == 503, resp.text
            assert resp.json()["code"] == "STREAM_UNAVAILABLE"
            posted = await asyncio.wait_for(task, 10)
    assert posted.terminal.event == "done"
    assert posted.text == expected_text(40)


async def test_stop_of_a_reply_whose_owner_does_not_answer_is_202_after_five_seconds(live):
    """A running reply (fresh heartbeat) whose owner never acts on the stop: the stop is asked
    for, and after 5 s the answer is 202 with the message still `streaming`."""
    user = await live.user()
    app = live.app
    async with live.client() as client:
        uid = await _user_id(client, user.access_token)
        row = await _streaming_row(app, uid, expected_text(2), 3, 0)
        started = time.monotonic()
        resp = await client.post(
            f"{CHAT}/conversations/{row.conversation_id}/stop", headers=auth(user.access_token)
        )
        waited = time.monotonic() - started
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["id"] == str(row.id) and body["status"] == "streaming"
    assert body["event_id"] == f"{row.id}:3" and body["content"] == expected_text(2)
    assert 5.0 <= waited < 8.0
