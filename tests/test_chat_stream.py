"""SPEC sections 5 to 7: the message stream, through the official SDK to a fake Anthropic API."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid

import pytest
from sqlalchemy import func, select, update

from alice.models import Conversation, Message
from tests.chatkit import CHAT, eventually, messages, send
from tests.conftest import bearer, serve
from tests.fakes.anthropic_server import expected_text, input_tokens_for


async def test_stream_events_ids_and_storage_as_specified(live, fake_anthropic):
    user = await live.user()
    async with live.client() as client:
        s = await send(client, user.access_token, "Hi [[tokens:6]]")
        assert s.status == 200
        assert s.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert s.headers["cache-control"] == "no-cache"
        assert s.headers["x-accel-buffering"] == "no"
        assert s.names == ["conversation"] + ["token"] * 6 + ["done"]
        mid = s.message_id
        assert [e.id for e in s.events] == [f"{mid}:{i}" for i in range(1, 9)]
        assert s.events[0].retry == 1000
        assert all(e.retry is None for e in s.events[1:])
        conv = s.data(0)
        assert conv["is_new"] is True and set(conv) == {"conversation_id", "is_new", "message_id"}
        assert [t["index"] for t in s.tokens] == list(range(6))
        assert s.text == expected_text(6)
        done = json.loads(s.terminal.data)
        record = fake_anthropic.requests[-1]
        assert done == {
            "message_id": str(mid),
            "conversation_id": conv["conversation_id"],
            "total_tokens": record.input_tokens + record.output_tokens,
            "status": "complete",
            "last_index": 5,
        }
        assert record.input_tokens == input_tokens_for(record.body)
        stored = await messages(client, user.access_token, conv["conversation_id"])
    assert [m["role"] for m in stored] == ["user", "assistant"]
    reply = stored[1]
    assert reply["id"] == str(mid)
    assert reply["content"] == expected_text(6)
    assert reply["status"] == "complete" and reply["event_id"] is None
    assert reply["token_count"] == record.output_tokens == 6
    assert stored[0]["content"] == "Hi [[tokens:6]]"


async def test_provider_receives_system_prompt_model_and_max_tokens(live, fake_anthropic):
    user = await live.user()
    async with live.client() as client:
        await send(client, user.access_token, "Hello there")
    body = fake_anthropic.requests[-1].body
    settings = live.app.state.services.settings
    assert body["system"] == settings.system_prompt
    assert body["model"] == settings.ai_model
    assert body["max_tokens"] == settings.ai_max_tokens
    assert body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "Hello there"}]


async def test_third_message_sends_the_two_earlier_turns_in_order(live, fake_anthropic):
    user = await live.user()
    async with live.client() as client:
        first = await send(client, user.access_token, "one [[tokens:2]]")
        cid = first.conversation_id
        await send(client, user.access_token, "two [[tokens:3]]", cid)
        third = await send(client, user.access_token, "three", cid)
    assert third.data(0)["is_new"] is False
    assert fake_anthropic.requests[-1].body["messages"] == [
        {"role": "user", "content": "one [[tokens:2]]"},
        {"role": "assistant", "content": expected_text(2)},
        {"role": "user", "content": "two [[tokens:3]]"},
        {"role": "assistant", "content": expected_text(3)},
        {"role": "user", "content": "three"},
    ]


@pytest.mark.parametrize("status", [401, 429, 500, 529])
async def test_provider_error_before_stream_deletes_reply_keeps_user_message(
    live, fake_anthropic, status
):
    user = await live.user()
    async with live.client() as client:
        s = await send(client, user.access_token, f"fail [[status:{status}]]")
        assert s.names == ["conversation", "error"]
        assert json.loads(s.terminal.data) == {
            "detail": "The AI service is unavailable.",
            "code": "AI_SERVICE_UNAVAILABLE",
        }
        stored = await messages(client, user.access_token, s.conversation_id)
        assert [m["role"] for m in stored] == ["user"]
        # The conversation goes on normally: the next message is accepted, and the provider
        # gets the kept user message joined with the new one into one user turn.
        again = await send(client, user.access_token, "again", s.conversation_id)
        assert again.status == 200 and again.names[0] == "conversation"
    assert fake_anthropic.requests[-1].body["messages"] == [
        {"role": "user", "content": f"fail [[status:{status}]]\n\nagain"}
    ]


@pytest.mark.parametrize("marker", ["[[error_after:3]]", "[[drop_after:3]]", "[[end_after:3]]"])
async def test_provider_failure_after_tokens_keeps_partial_as_incomplete(live, marker):
    user = await live.user()
    async with live.client() as client:
        s = await send(client, user.access_token, f"[[tokens:10]] {marker}")
        assert s.names == ["conversation"] + ["token"] * 3 + ["error"]
        assert json.loads(s.terminal.data)["code"] == "AI_SERVICE_UNAVAILABLE"
        stored = await messages(client, user.access_token, s.conversation_id)
    assert stored[1]["status"] == "incomplete"
    assert stored[1]["content"] == expected_text(3) == s.text
    assert stored[1]["token_count"] == 3


async def test_provider_hanging_past_max_time_ends_with_time_limit(
    settings, ai_settings, fake_anthropic
):
    # 1 s: the slow reply must have had its first tokens when the limit strikes (a reply with
    # no text is deleted); at 0.5 s one CI run ended it before its first token.
    s2 = settings.model_copy(update={**ai_settings, "generation_max_seconds": 1.0})
    async with serve(s2) as (app, url):
        user = await app.state.services.auth.register("h@example.com", "SecurePass123", None)
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            s = await send(client, user.access_token, "[[hang]]")
            assert s.names == ["conversation", "error"]
            assert json.loads(s.terminal.data)["code"] == "GENERATION_TIME_LIMIT"
            assert [
                m["role"] for m in await messages(client, user.access_token, s.conversation_id)
            ] == ["user"]
            slow = await send(client, user.access_token, "[[tokens:100]] [[delay:100]]")
            assert slow.terminal.event == "error"
            assert json.loads(slow.terminal.data)["code"] == "GENERATION_TIME_LIMIT"
            stored = await messages(client, user.access_token, slow.conversation_id)
    assert stored[1]["status"] == "incomplete" and stored[1]["content"] == slow.text != ""
    record = fake_anthropic.requests[-1]
    await asyncio.to_thread(fake_anthropic.wait_for, lambda: record.finished, 2)
    assert record.disconnected and not record.reached_stop


async def test_provider_silent_past_ai_timeout_keeps_partial(settings, ai_settings):
    s2 = settings.model_copy(update={**ai_settings, "ai_timeout_seconds": 0.5})
    async with serve(s2) as (app, url):
        user = await app.state.services.auth.register("t@example.com", "SecurePass123", None)
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            s = await send(client, user.access_token, "[[tokens:5]] [[delay:3000]]")
            assert s.names == ["conversation", "token", "error"]
            assert json.loads(s.terminal.data)["code"] == "AI_SERVICE_UNAVAILABLE"
            stored = await messages(client, user.access_token, s.conversation_id)
    assert stored[1]["status"] == "incomplete" and stored[1]["content"] == "tok0 "


async def test_ai_timeout_counts_from_the_last_event_never_sooner(settings, ai_settings):
    # Events 0.3 s apart never trip a 0.5 s idle limit, however long the reply; after the
    # first token only pings come (bytes, so the HTTP read timeout never fires; no events):
    # the limit trips, no sooner than 0.5 s after that token.
    s2 = settings.model_copy(update={**ai_settings, "ai_timeout_seconds": 0.5})
    async with serve(s2) as (app, url):
        user = await app.state.services.auth.register("t@example.com", "SecurePass123", None)
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            steady = await send(client, user.access_token, "[[tokens:8]] [[delay:300]]")
            assert steady.names[-1] == "done" and len(steady.tokens) == 8
            started = time.monotonic()
            silent = await send(
                client, user.access_token, "[[tokens:2]] [[delay:3000]] [[pings:100]]"
            )
            took = time.monotonic() - started
    assert silent.names == ["conversation", "token", "error"]
    assert json.loads(silent.terminal.data)["code"] == "AI_SERVICE_UNAVAILABLE"
    assert 0.5 <= took < 2.5


async def test_client_disconnect_reply_runs_to_its_end(live, fake_anthropic):
    user = await live.user()
    async with live.client() as client:
        s = await send(client, user.access_token, "[[tokens:30]] [[delay:20]]", stop_after_tokens=3)
        assert len(s.tokens) == 3
    record = fake_anthropic.requests[-1]
    assert await asyncio.to_thread(fake_anthropic.wait_for, lambda: record.finished, 5)
    assert record.reached_stop and not record.disconnected

    async def stored_complete():
        async with live.client() as c:
            items = await messages(c, user.access_token, s.conversation_id)
        return items[1] if items[1]["status"] == "complete" else None

    reply = await eventually(stored_complete)
    assert reply["content"] == expected_text(30)


async def test_client_disconnect_with_stop_mode_closes_provider_within_a_second(
    settings, ai_settings, fake_anthropic
):
    s2 = settings.model_copy(update={**ai_settings, "generation_on_disconnect": "stop"})
    async with serve(s2) as (app, url):
        user = await app.state.services.auth.register("d@example.com", "SecurePass123", None)
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            s = await send(
                client, user.access_token, "[[tokens:200]] [[delay:20]]", stop_after_tokens=3
            )
        left_at = time.monotonic()
        record = fake_anthropic.requests[-1]
        assert await asyncio.to_thread(fake_anthropic.wait_for, lambda: record.disconnected, 2)
        assert record.disconnected_at - left_at < 1.0
        assert not record.reached_stop

        async def stored():
            async with app.state.services.sessions() as session:
                row = await session.get(Message, s.message_id)
            return row if row is not None and row.status != "streaming" else None

        row = await eventually(stored)
    assert row.status == "incomplete"
    assert row.content.startswith(expected_text(3)) and len(row.content) >= len(expected_text(3))


async def test_ten_simultaneous_messages_one_stream_nine_409(settings, ai_settings, fake_anthropic):
    s2 = settings.model_copy(update={**ai_settings, "rate_limit_enabled": False})
    async with serve(s2) as (app, url):
        user = await app.state.services.auth.register("c@example.com", "SecurePass123", None)
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            first = await send(client, user.access_token, "first")
            cid = first.conversation_id
            results = await asyncio.gather(
                *(
                    send(client, user.access_token, "[[tokens:5]] [[delay:400]]", cid)
                    for _ in range(10)
                )
            )
        statuses = sorted(r.status for r in results)
        assert statuses == [200] + [409] * 9
        for r in results:
            if r.status == 409:
                assert r.body["code"] == "GENERATION_IN_PROGRESS"
            else:
                assert r.terminal.event == "done"
        async with app.state.services.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.conversation_id == cid, Message.role == "user")
            )
    assert count == 2


async def test_message_to_running_conversation_is_409_and_new_message_moves_updated_at(live):
    user = await live.user()
    async with live.client() as client:
        s = await send(client, user.access_token, "[[tokens:50]] [[delay:20]]", stop_after_tokens=1)
        busy = await client.post(
            f"{CHAT}/message",
            json={"content": "more", "conversation_id": str(s.conversation_id)},
            headers={"Authorization": f"Bearer {user.access_token}"},
        )
        assert busy.status_code == 409 and busy.json()["code"] == "GENERATION_IN_PROGRESS"


async def test_heartbeat_saves_text_without_moving_updated_at(settings, ai_settings):
    s2 = settings.model_copy(update={**ai_settings, "generation_heartbeat_seconds": 0.1})
    async with serve(s2) as (app, url):
        user = await app.state.services.auth.register("b@example.com", "SecurePass123", None)
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            s = await send(
                client, user.access_token, "[[tokens:60]] [[delay:20]]", stop_after_tokens=5
            )

            async def saved():
                items = await messages(client, user.access_token, s.conversation_id)
                reply = items[1]
                return reply if reply["status"] == "streaming" and reply["content"] else None

            reply = await eventually(saved)
            mid, seq = reply["event_id"].split(":")
            assert mid == str(s.message_id)
            # The saved content covers exactly the events up to its event id.
            n_tokens = int(seq) - 1
            assert reply["content"] == expected_text(n_tokens)
            async with app.state.services.sessions() as session:
                conv = await session.get(Conversation, s.conversation_id)
                user_msg = (
                    await session.execute(
                        select(Message).where(
                            Message.conversation_id == conv.id, Message.role == "user"
                        )
                    )
                ).scalar_one()
            assert conv.updated_at == user_msg.created_at


async def test_reply_ended_elsewhere_is_not_overwritten_by_its_owner(settings, ai_settings):
    s2 = settings.model_copy(update={**ai_settings, "generation_heartbeat_seconds": 0.1})
    async with serve(s2) as (app, url):
        user = await app.state.services.auth.register("z@example.com", "SecurePass123", None)
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            s = await send(
                client, user.access_token, "[[tokens:100]] [[delay:20]]", stop_after_tokens=2
            )
            async with app.state.services.sessions() as session, session.begin():
                await session.execute(
                    update(Message)
                    .where(Message.id == s.message_id)
                    .values(status="incomplete", content="kept by the reaper")
                )
            await eventually(lambda: not app.state.services.generations.is_local(s.message_id))
            async with app.state.services.sessions() as session:
                row = await session.get(Message, s.message_id)
    assert row.status == "incomplete" and row.content == "kept by the reaper"


async def test_heartbeats_in_batches_save_every_reply_and_abandon_only_the_one_ended_elsewhere(
    settings, ai_settings, monkeypatch
):
    """Heartbeats go several replies to a transaction (2 here, to make 5 replies 3 batches):
    each running reply's text is saved, and a reply ended elsewhere is abandoned by its owner
    while the others of its batch go on."""
    from alice.services import generation

    monkeypatch.setattr(generation, "_BEATS_PER_COMMIT", 2)
    s2 = settings.model_copy(update={**ai_settings, "generation_heartbeat_seconds": 0.1})
    async with serve(s2) as (app, url):
        user = await app.state.services.auth.register("batch@example.com", "SecurePass123", None)
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            streams = [
                await send(
                    client, user.access_token, "[[tokens:150]] [[delay:20]]", stop_after_tokens=1
                )
                for _ in range(5)
            ]
            ended = streams[2]
            async with app.state.services.sessions() as session, session.begin():
                await session.execute(
                    update(Message)
                    .where(Message.id == ended.message_id)
                    .values(status="incomplete", content="kept by the reaper")
                )
            generations = app.state.services.generations
            await eventually(lambda: not generations.is_local(ended.message_id))

            async def all_saved():
                replies = []
                for s in streams:
                    if s is ended:
                        continue
                    items = await messages(client, user.access_token, s.conversation_id)
                    reply = items[1]
                    if reply["status"] != "streaming" or not reply["content"]:
                        return None
                    replies.append(reply)
                return replies

            saved = await eventually(all_saved)
            for reply in saved:
                n_tokens = int(reply["event_id"].split(":")[1]) - 1
                assert reply["content"] == expected_text(n_tokens)
            assert all(generations.is_local(s.message_id) for s in streams if s is not ended)
            async with app.state.services.sessions() as session:
                row = await session.get(Message, ended.message_id)
    assert row.status == "incomplete" and row.content == "kept by the reaper"


async def test_replies_that_end_together_each_save_their_own_end_and_usage(settings, ai_settings):
    """Eight replies sent at once end at nearly the same moment, so their ends share commits
    (`GenerationRegistry._commit_end`): each must be saved complete with its own text, and the
    user's usage must count every reply and token exactly once."""
    async with serve(settings.model_copy(update=ai_settings)) as (app, url):
        user = await app.state.services.auth.register("ends@example.com", "SecurePass123", None)
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            streams = await asyncio.gather(
                *(
                    send(client, user.access_token, f"{i} [[tokens:6]] [[delay:5]]")
                    for i in range(8)
                )
            )
            for stream in streams:
                assert json.loads(stream.terminal.data)["status"] == "complete"
                items = await messages(client, user.access_token, stream.conversation_id)
                reply = items[1]
                assert reply["id"] == str(stream.message_id)
                assert (reply["status"], reply["content"]) == ("complete", expected_text(6))
            resp = await client.get(
                "/api/v1/auth/me/usage", params={"days": 1}, headers=bearer(user.access_token)
            )
            today = resp.json()["items"][-1]
            assert (today["replies"], today["output_tokens"]) == (8, 48)
            assert today["input_tokens"] == 8 * input_tokens_for({"messages": [{}]})


async def test_reply_ends_waiting_together_share_one_commit_and_a_failing_one_sinks_none(
    app, monkeypatch
):
    """Through the private seam (`_commit_end`, no public way to line ends up in one turn of
    the loop): ends queued together are one transaction, each caller gets its own result, and
    an end that raises is retried alone, so the others commit and only its caller sees it;
    a batch runs in its ends' order."""
    generations = app.state.services.generations
    direct = generations._direct
    transactions = []
    real = direct.transaction

    async def counted(work):
        transactions.append(work)
        return await real(work)

    monkeypatch.setattr(direct, "transaction", counted)

    def ok(value):
        return lambda conn: conn.execute(select(func.count()).select_from(Message)) and value

    results = await asyncio.gather(*(generations._commit_end(ok(i % 2 == 0)) for i in range(5)))
    assert results == [True, False, True, False, True]
    assert len(transactions) == 1

    def broken(conn):
        raise RuntimeError("this end cannot be saved")

    transactions.clear()
    got = await asyncio.gather(
        generations._commit_end(ok(True)),
        generations._commit_end(broken),
        generations._commit_end(ok(False)),
        return_exceptions=True,
    )
    assert got[0] is True and got[2] is False
    assert isinstance(got[1], RuntimeError)
    assert len(transactions) == 4  # the three together, then each alone

    # A batch runs in the ends' order (user, reply), whatever order they came in: two
    # processes' batches then take one user's ledger rows in the same order.
    ran = []

    def named(name):
        return lambda conn: ran.append(name) or True

    orders = [("user-b", "1"), ("user-a", "2"), ("user-a", "1")]
    await asyncio.gather(*(generations._commit_end(named(o), o) for o in orders))
    assert ran == [("user-a", "1"), ("user-a", "2"), ("user-b", "1")]


async def test_a_crowd_of_reply_ends_commits_in_bounded_batches_and_frees_the_loop_between(
    app, monkeypatch
):
    """Through the private seam (`_commit_end`, as above): an inline transaction holds the
    event loop, so 60 ends waiting together are not one transaction of 60 but batches of at
    most 25 (three), each caller gets its own end's result, and another task runs between two
    batches (every stream's next token waits for the batch in hand, not for all of them)."""
    generations = app.state.services.generations
    direct = generations._direct
    events: list[str] = []
    real = direct.transaction

    async def counted(work):
        events.append("transaction")
        return await real(work)

    monkeypatch.setattr(direct, "transaction", counted)
    ticking = True

    async def ticker():
        while ticking:
            events.append("tick")
            await asyncio.sleep(0)

    other = asyncio.create_task(ticker())
    results = await asyncio.gather(
        *(generations._commit_end(lambda conn, i=i: i % 3 == 0) for i in range(60))
    )
    ticking = False
    await other
    assert results == [i % 3 == 0 for i in range(60)]
    batches = [i for i, event in enumerate(events) if event == "transaction"]
    assert len(batches) == 3
    assert all("tick" in events[a + 1 : b] for a, b in itertools.pairwise(batches))


async def test_mock_provider_streams_word_by_word(app, client, user):
    resp = await client.post(
        f"{CHAT}/message", json={"content": "Hello ALICE!"}, headers=user.headers
    )
    assert resp.status_code == 200
    from httpx_sse._decoders import SSEDecoder

    decoder = SSEDecoder()
    events = []
    for line in resp.text.splitlines():
        event = decoder.decode(line)
        if event is not None:
            events.append(event)
    names = [e.event for e in events]
    assert names[0] == "conversation" and names[-1] == "done"
    tokens = [json.loads(e.data)["content"] for e in events if e.event == "token"]
    assert len(tokens) > 3 and all(t.strip() and " " not in t.strip() for t in tokens)
    done = json.loads(events[-1].data)
    assert done["last_index"] == len(tokens) - 1
    async with app.state.services.sessions() as session:
        row = await session.get(Message, uuid.UUID(done["message_id"]))
    assert row.content == "".join(tokens) and row.token_count == len(tokens)


async def test_fifty_streams_on_a_pool_of_five_while_me_answers(
    backend, settings, ai_settings, fake_anthropic
):
    """Open streams hold no database connection: 50 at once on a PostgreSQL pool of 5 all
    complete while GET /auth/me keeps answering."""
    if backend == "sqlite":
        pytest.skip("the connection pool is PostgreSQL's")
    s2 = settings.model_copy(
        update={**ai_settings, "database_pool_size": 5, "rate_limit_enabled": False}
    )
    async with serve(s2) as (app, url):
        user = await app.state.services.auth.register("p@example.com", "SecurePass123", None)
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            started = time.monotonic()
            streams = asyncio.gather(
                *(send(client, user.access_token, "[[tokens:30]] [[delay:50]]") for _ in range(50))
            )
            task = asyncio.ensure_future(streams)
            slowest, answers = 0.0, 0
            while not task.done():
                t0 = time.monotonic()
                me = await client.get(
                    "/api/v1/auth/me", headers={"Authorization": f"Bearer {user.access_token}"}
                )
                slowest = max(slowest, time.monotonic() - t0)
                assert me.status_code == 200
                answers += 1
                await asyncio.sleep(0.05)
            results = await task
            elapsed = time.monotonic() - started
    assert all(r.terminal.event == "done" and r.text == expected_text(30) for r in results)
    assert answers >= 5 and slowest < 3.0
    # Each stream takes 30 deltas 50 ms apart (~1.5 s): run together, not one pool slot at a time.
    assert elapsed < 15, elapsed
    print(f"50 streams on a pool of 5: {elapsed:.2f} s, /auth/me slowest {slowest * 1000:.0f} ms")


async def test_unexpected_provider_bug_ends_reply_instead_of_leaving_it_streaming_mocked(
    app, client, user
):
    """A provider that raises something unforeseen (mocked: a stub generator) still ends the
    reply: the readers get an error and nothing is left `streaming`."""
    from alice.services.ai.base import TextDelta

    class Broken:
        async def stream(self, system, messages, model=None):
            yield TextDelta("partial ")
            raise RuntimeError("a bug")

    app.state.services.generations._provider = Broken()
    resp = await client.post(f"{CHAT}/message", json={"content": "hi"}, headers=user.headers)
    assert resp.status_code == 200
    assert "event: error" in resp.text and "AI_SERVICE_UNAVAILABLE" in resp.text
    async with app.state.services.sessions() as session:
        rows = (await session.execute(select(Message).where(Message.role == "assistant"))).scalars()
        (reply,) = list(rows)
    assert reply.status == "incomplete" and reply.content == "partial "


async def test_an_open_stream_sends_a_ping_comment_every_sse_ping_seconds(settings, ai_settings):
    s2 = settings.model_copy(update={**ai_settings, "sse_ping_seconds": 0.2})
    async with serve(s2) as (app, url):
        user = await app.state.services.auth.register("ping@example.com", "SecurePass123", None)
        import httpx

        headers = {"Authorization": f"Bearer {user.access_token}"}
        body = {"content": "[[tokens:2]] [[delay:1500]]"}
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as client,
            client.stream("POST", f"{CHAT}/message", json=body, headers=headers) as resp,
        ):
            text = (await resp.aread()).decode()
    # 1.5 s between the two tokens: a comment line every 0.2 s meanwhile (never in an event).
    blocks = text.split("\n\n")
    assert blocks[-1] == ""
    first, second = (i for i, b in enumerate(blocks) if "event: token" in b)
    between = blocks[first + 1 : second]
    assert 4 <= len(between) <= 9 and set(between) == {": ping"}
    assert all(b.startswith(("retry: ", "id: ", ": ping")) for b in blocks[:-1])
