"""SPEC section 14 across processes: a regenerated reply is a reply like any other, re-attached,
stopped and reaped from another process (real `alice serve` processes on PostgreSQL + Redis;
skipped unless ALICE_TEST_POSTGRES_URL and ALICE_TEST_REDIS_URL are both set)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import httpx
import pytest

from tests.chatkit import (
    CHAT,
    background_stream,
    eventually,
    messages,
    nonce,
    read_stream,
    reattach,
    send,
)
from tests.fakes.anthropic_server import expected_text
from tests.test_multiprocess import (
    HEARTBEAT,
    auth,
    client,
    pytestmark,  # noqa: F401 - the same skip
    register,
    seqs,
    triples,
)
from tests.test_multiprocess import cluster as cluster  # noqa: F401 - a cluster of our own

# The tests below take the `cluster` fixture by name (ruff sees a redefinition: F811).


def regenerate_url(conversation_id: Any, message_id: Any) -> str:
    return f"{CHAT}/conversations/{conversation_id}/messages/{message_id}/regenerate"


async def test_regenerated_reply_is_reattached_through_another_process(cluster, fake_anthropic):  # noqa: F811
    tag = nonce()
    async with client(cluster.a) as a, client(cluster.b) as b:
        token = (await register(a))["access_token"]
        first = await send(a, token, f"{tag} [[tokens:30]] [[delay:20]]")
        cid = first.conversation_id
        assert first.terminal.event == "done"
        _, old = await messages(a, token, cid)
        # The client leaves after three tokens of the regenerated reply; it runs on.
        part = await read_stream(
            a, "POST", regenerate_url(cid, old["id"]), headers=auth(token), stop_after_tokens=3
        )
        assert part.data(0)["is_new"] is False and len(part.tokens) == 3
        rest = await reattach(b, token, cid, last_event_id=part.events[-1].id)
        assert rest.status == 200 and rest.events[0].retry == 1000
        assert rest.names == ["token"] * 27 + ["done"]
        assert seqs(rest.events) == list(range(5, 33))
        assert part.text + rest.text == expected_text(30)
        done = json.loads(rest.terminal.data)
        assert done["status"] == "complete" and done["message_id"] == str(part.message_id)
        # Without a cursor, B replays the newest reply (the regenerated one) from its start.
        whole = await reattach(b, token, cid)
        assert triples(whole.events) == triples(part.events) + triples(rest.events)
        items = await messages(b, token, cid)
        assert [m["id"] for m in items] == [items[0]["id"], str(part.message_id)]
        assert items[1]["content"] == expected_text(30)
        assert (items[1]["sibling_index"], items[1]["sibling_count"]) == (1, 2)
    asked = fake_anthropic.requests_with(tag)
    assert len(asked) == 2 and asked[0].body["messages"] == asked[1].body["messages"]


async def test_regenerated_reply_stopped_through_another_process(cluster, fake_anthropic):  # noqa: F811
    tag = nonce()
    async with client(cluster.a) as a, client(cluster.b) as b:
        token = (await register(a))["access_token"]
        first = await send(a, token, f"{tag} [[tokens:300]] [[delay:20]]", stop_after_tokens=1)
        cid = first.conversation_id
        stopped = await b.post(f"{CHAT}/conversations/{cid}/stop", headers=auth(token))
        assert stopped.status_code == 200
        _, old = await messages(a, token, cid)
        reader, task = background_stream(
            a, "POST", regenerate_url(cid, old["id"]), headers=auth(token)
        )
        await eventually(lambda: len(reader.tokens) >= 3)
        busy = await read_stream(b, "POST", regenerate_url(cid, old["id"]), headers=auth(token))
        assert busy.status == 409 and busy.body["code"] == "GENERATION_IN_PROGRESS"
        resp = await b.post(
            f"{CHAT}/conversations/{cid}/stop", json={"last_index": 2}, headers=auth(token)
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "stopped"
        assert resp.json()["content"] == expected_text(3)
        assert resp.json()["id"] == str(reader.message_id)
        posted = await asyncio.wait_for(task, 5)
        assert posted.terminal.event == "done"
        assert json.loads(posted.terminal.data)["last_index"] == 2
        items = await messages(b, token, cid)
        assert items[1] == resp.json()


async def test_regenerated_reply_of_a_killed_process_is_reaped_by_another(cluster):  # noqa: F811
    c_proc = cluster.spawn("c").wait_ready()
    tag = nonce()
    async with client(c_proc) as c, client(cluster.b) as b:
        token = (await register(b))["access_token"]
        first = await send(b, token, f"{tag} [[tokens:500]] [[delay:50]]", stop_after_tokens=1)
        cid = first.conversation_id
        assert (
            await b.post(f"{CHAT}/conversations/{cid}/stop", headers=auth(token))
        ).status_code == 200
        _, old = await messages(b, token, cid)
        reader, task = background_stream(
            c, "POST", regenerate_url(cid, old["id"]), headers=auth(token)
        )
        await eventually(lambda: len(reader.tokens) >= 10, timeout=10)

        async def saved() -> Any:
            reply = (await messages(b, token, cid))[1]
            return reply if reply["status"] == "streaming" and reply["content"] else None

        checkpoint = await eventually(saved, timeout=5, interval=0.25)
        assert checkpoint["id"] == str(reader.message_id)
        assert c_proc.popen is not None
        c_proc.popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        c_proc.popen.wait(5)
        with pytest.raises(httpx.HTTPError):
            await task

        async def reaped() -> Any:
            reply = (await messages(b, token, cid))[1]
            return reply if reply["status"] != "streaming" else None

        reply = await eventually(reaped, timeout=9 * HEARTBEAT + 3, interval=0.5)
        assert time.monotonic() - killed <= 9 * HEARTBEAT + 0.5
        assert reply["id"] == str(reader.message_id) and reply["status"] == "incomplete"
        assert reply["content"].startswith(checkpoint["content"])
        lost = await reattach(b, token, cid)
        assert json.loads(lost.terminal.data)["code"] == "GENERATION_LOST"
        # The conversation goes on, and both versions are there.
        # Its context asks the fake for 500 tokens 50 ms apart: a few show it runs, then stop.
        again = await read_stream(
            b, "POST", regenerate_url(cid, old["id"]), headers=auth(token), stop_after_tokens=3
        )
        assert again.status == 200 and len(again.tokens) == 3
        await b.post(f"{CHAT}/conversations/{cid}/stop", headers=auth(token))
        items = await messages(b, token, cid)
        assert (items[1]["sibling_index"], items[1]["sibling_count"]) == (2, 3)
