"""SPEC sections 6, 8, 9 and 11 across processes: real `alice serve` subprocesses on one fresh
PostgreSQL database and one Redis (research/resumable.md section C, rows 7, 8, 11, 16; the
shared limits and the atomic rotation). Skipped unless ALICE_TEST_POSTGRES_URL and
ALICE_TEST_REDIS_URL are both set.

Each test talks through X-Forwarded-For addresses of its own (the processes trust 127.0.0.1 as
a proxy), so that the per-IP limits of one test do not spend another's."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chatkit import (
    CHAT,
    background_send,
    background_stream,
    eventually,
    messages,
    nonce,
    provider_request,
    reattach,
    send,
)
from tests.conftest import PASSWORD, POSTGRES_URL, REDIS_URL
from tests.conftest import bearer as auth
from tests.fakes.anthropic_server import expected_text
from tests.processes import Proc, migrate, postgres_and_redis, process_env

pytestmark = pytest.mark.skipif(
    not (POSTGRES_URL and REDIS_URL),
    reason="needs ALICE_TEST_POSTGRES_URL and ALICE_TEST_REDIS_URL",
)

HEARTBEAT = 1.0


@dataclass
class Cluster:
    base_env: dict[str, str]
    workdir: Path
    a: Proc | None = None
    b: Proc | None = None
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, **extra: str) -> Proc:
        proc = Proc(name, {**self.base_env, **extra}, self.workdir)
        self.procs.append(proc)
        return proc.start()


@pytest.fixture(scope="module")
def cluster(fake_anthropic: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two `alice serve` processes, A and B, on a database of their own and one Redis."""
    workdir = tmp_path_factory.mktemp("multiprocess")
    with postgres_and_redis("alice-mp") as storage:
        env = process_env(
            workdir,
            **storage,
            ANTHROPIC_API_KEY="test-key",
            ANTHROPIC_BASE_URL=fake_anthropic.base_url,
            ALICE_GENERATION_HEARTBEAT_SECONDS=str(HEARTBEAT),
            ALICE_SHUTDOWN_GRACE_SECONDS="2",
            ALICE_RATE_LIMIT_ENABLED="true",
            ALICE_FORWARDED_ALLOW_IPS="127.0.0.1",
        )
        migrate(env, workdir)
        cluster = Cluster(env, workdir)
        try:
            cluster.a = cluster.spawn("a")
            cluster.b = cluster.spawn("b")
            cluster.a.wait_ready()
            cluster.b.wait_ready()
            yield cluster
        finally:
            for proc in cluster.procs:
                proc.stop()


# --- helpers ---------------------------------------------------------------------------------


def client_ip() -> str:
    return f"10.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def client(proc: Proc, ip: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=proc.url, timeout=30, headers={"X-Forwarded-For": ip or client_ip()}
    )


async def register(c: httpx.AsyncClient) -> dict[str, Any]:
    email = f"mp-{uuid.uuid4().hex[:10]}@example.com"
    resp = await c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert resp.status_code == 201, resp.text
    return {"email": email, **resp.json()}


def triples(events: list[Any]) -> list[tuple[str, str, str]]:
    return [(e.id, e.event, e.data) for e in events]


def seqs(events: list[Any]) -> list[int]:
    return [int(e.id.rsplit(":", 1)[1]) for e in events]


# --- a reply and its readers across processes ---------------------------------------------


async def test_reply_started_on_a_is_reattached_through_b(cluster, fake_anthropic):
    tag = nonce()
    async with client(cluster.a) as a, client(cluster.b) as b:
        user = await register(a)
        token = user["access_token"]
        first = await send(a, token, f"{tag} [[tokens:30]] [[delay:20]]", stop_after_tokens=3)
        assert len(first.tokens) == 3
        rest = await reattach(b, token, first.conversation_id, last_event_id=first.events[-1].id)
        assert rest.status == 200
        assert rest.events[0].retry == 1000
        assert rest.names == ["token"] * 27 + ["done"]
        assert seqs(rest.events) == list(range(5, 33))
        assert first.text + rest.text == expected_text(30)
        done = json.loads(rest.terminal.data)
        assert done["status"] == "complete" and done["message_id"] == str(first.message_id)
        # From the start, through B, once it has ended: the same events as A's.
        whole = await reattach(b, token, first.conversation_id)
        assert triples(whole.events) == triples(first.events) + triples(rest.events)
    assert provider_request(fake_anthropic, tag).reached_stop


async def test_stop_sent_to_b_closes_the_provider_request_on_a(cluster, fake_anthropic):
    tag = nonce()
    async with client(cluster.a) as a, client(cluster.b) as b:
        token = (await register(a))["access_token"]
        reader, task = background_send(a, token, f"{tag} [[tokens:300]] [[delay:20]]")
        await eventually(lambda: len(reader.tokens) >= 3)
        cid = reader.conversation_id
        asked = time.monotonic()
        resp = await b.post(
            f"{CHAT}/conversations/{cid}/stop", json={"last_index": 2}, headers=auth(token)
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"] == "stopped"
        assert body["content"] == expected_text(3) and body["token_count"] == 3
        record = provider_request(fake_anthropic, tag)
        assert await fake_anthropic.until(lambda: record.disconnected, 2.0)
        assert record.disconnected_at - asked < 1.0
        assert not record.reached_stop
        posted = await asyncio.wait_for(task, 5)
        done = json.loads(posted.terminal.data)
        assert posted.terminal.event == "done"
        assert done["status"] == "stopped" and done["last_index"] == 2
        again = await b.post(f"{CHAT}/conversations/{cid}/stop", headers=auth(token))
        assert again.status_code == 204
        stored = (await messages(b, token, cid))[1]
    assert stored == body


async def test_conversation_written_through_a_is_read_through_b(cluster):
    async with client(cluster.a) as a, client(cluster.b) as b:
        token = (await register(a))["access_token"]
        s = await send(a, token, "Hello from A [[tokens:3]]")
        items = await messages(b, token, s.conversation_id)
        assert [(m["role"], m["content"]) for m in items] == [
            ("user", "Hello from A [[tokens:3]]"),
            ("assistant", expected_text(3)),
        ]
        resp = await b.get(f"{CHAT}/conversations", headers=auth(token))
        assert resp.status_code == 200
        assert [c["id"] for c in resp.json()["items"]] == [str(s.conversation_id)]
        renamed = await b.patch(
            f"{CHAT}/conversations/{s.conversation_id}", json={"title": "B"}, headers=auth(token)
        )
        assert renamed.status_code == 200
        resp = await a.get(f"{CHAT}/conversations", headers=auth(token))
        assert resp.json()["items"][0]["title"] == "B"


async def test_one_idempotency_key_at_once_on_two_processes_stores_one_message(cluster):
    """SPEC 6: two requests with one key, at once, on two processes: one message is sent,
    and both answers are that reply's events from its start."""
    async with client(cluster.a) as a, client(cluster.b) as b:
        token = (await register(a))["access_token"]
        for round_ in range(5):
            key = {"Idempotency-Key": uuid.uuid4().hex}
            content = f"once {round_} [[tokens:20]] [[delay:10]]"
            on_a, on_b = await asyncio.gather(
                send(a, token, content, extra_headers=key),
                send(b, token, content, extra_headers=key),
            )
            assert on_a.status == on_b.status == 200, (on_a.body, on_b.body)
            assert on_a.message_id == on_b.message_id
            assert triples(on_a.events) == triples(on_b.events)
            assert on_a.terminal.event == "done" and on_a.text == expected_text(20)
            stored = await messages(b, token, on_a.conversation_id)
            assert [(m["role"], m["content"]) for m in stored] == [
                ("user", content),
                ("assistant", expected_text(20)),
            ]
        resp = await a.get(f"{CHAT}/conversations", headers=auth(token))
        assert len(resp.json()["items"]) == 5


# --- a process that dies ----------------------------------------------------------------------


async def test_killed_process_reply_is_reaped_by_another(cluster, fake_anthropic):
    c_proc = cluster.spawn("c").wait_ready()
    tag = nonce()
    async with client(c_proc) as c, client(cluster.b) as b:
        token = (await register(c))["access_token"]
        reader, task = background_send(c, token, f"{tag} [[tokens:500]] [[delay:50]]")
        await eventually(lambda: len(reader.tokens) >= 10, timeout=10)
        cid = reader.conversation_id

        async def saved() -> Any:
            reply = (await messages(b, token, cid))[1]
            return reply if reply["status"] == "streaming" and reply["content"] else None

        # Polled gently: GET messages counts against the user's 60/min.
        checkpoint = await eventually(saved, timeout=5, interval=0.25)
        cut = reader.events[-1]
        watcher, watching = background_stream(
            b,
            "GET",
            f"{CHAT}/conversations/{cid}/stream",
            headers={**auth(token), "Last-Event-ID": cut.id},
        )
        await eventually(lambda: watcher.tokens, timeout=5)
        assert c_proc.popen is not None
        c_proc.popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        c_proc.popen.wait(5)
        with pytest.raises(httpx.HTTPError):
            await task  # the POST's connection died with its process

        async def reaped() -> Any:
            reply = (await messages(b, token, cid))[1]
            return reply if reply["status"] != "streaming" else None

        reply = await eventually(reaped, timeout=9 * HEARTBEAT + 3, interval=0.5)
        assert time.monotonic() - killed <= 9 * HEARTBEAT + 0.5
        assert reply["status"] == "incomplete"
        assert reply["content"].startswith(checkpoint["content"])
        assert reply["event_id"] is None

        lost = await asyncio.wait_for(watching, 5)
        assert lost.terminal.event == "error"
        assert json.loads(lost.terminal.data)["code"] == "GENERATION_LOST"
        assert set(lost.names[:-1]) == {"token"}
        first_index = lost.tokens[0]["index"]
        assert first_index == json.loads(cut.data)["index"] + 1
        assert [t["index"] for t in lost.tokens] == list(
            range(first_index, first_index + len(lost.tokens))
        )
        # A reader coming later replays to the same end.
        later = await reattach(b, token, cid)
        assert later.names[0] == "conversation" and later.names[-1] == "error"
        assert json.loads(later.terminal.data)["code"] == "GENERATION_LOST"
        # The conversation goes on: its reply is no longer running.
        nxt = await send(b, token, "[[tokens:2]]", cid)
        assert nxt.terminal.event == "done"
    record = provider_request(fake_anthropic, tag)
    assert await fake_anthropic.until(lambda: record.disconnected, 2.0)


async def test_shutdown_ends_own_replies_and_releases_readers_of_others(cluster):
    """SIGTERM: the replies the process generates run on for the grace, are then kept
    `incomplete`, and their readers, wherever they are, get SERVER_SHUTTING_DOWN; the streams
    it serves for replies generated elsewhere are closed at once without a terminal event,
    and their clients re-attach to another process."""
    d_proc = cluster.spawn("d", ALICE_SHUTDOWN_GRACE_SECONDS="1").wait_ready()
    async with client(d_proc) as d, client(cluster.a) as a, client(cluster.b) as b:
        token = (await register(a))["access_token"]
        own, own_task = background_send(d, token, "[[tokens:500]] [[delay:50]]")
        other, other_task = background_send(a, token, "[[tokens:150]] [[delay:20]]")
        await eventually(lambda: len(own.tokens) >= 2 and len(other.tokens) >= 2, timeout=10)
        on_b, on_b_task = background_stream(
            b,
            "GET",
            f"{CHAT}/conversations/{own.conversation_id}/stream",
            headers={**auth(token), "Last-Event-ID": own.events[-1].id},
        )
        on_d, on_d_task = background_stream(
            d,
            "GET",
            f"{CHAT}/conversations/{other.conversation_id}/stream",
            headers={**auth(token), "Last-Event-ID": other.events[-1].id},
        )
        await eventually(lambda: on_b.tokens and on_d.tokens, timeout=5)
        assert d_proc.popen is not None
        d_proc.popen.send_signal(signal.SIGTERM)

        # D's stream of A's reply is closed at once, cleanly, without a terminal event.
        await asyncio.wait_for(on_d_task, 10)
        assert on_d.events and on_d.names[-1] == "token"
        assert not own_task.done()  # D's own reply runs on through the grace

        # Readers of D's reply, on D itself and elsewhere, get SERVER_SHUTTING_DOWN once the
        # grace is over.
        for reader_task in (own_task, on_b_task):
            ended = await asyncio.wait_for(reader_task, 15)
            assert ended.terminal.event == "error"
            assert json.loads(ended.terminal.data)["code"] == "SERVER_SHUTTING_DOWN"
        # uvicorn ends by re-raising the SIGTERM it handled.
        assert d_proc.popen.wait(15) in (0, -signal.SIGTERM)
        assert "Traceback" not in d_proc.log()
        assert "without completing response" not in d_proc.log()
        reply = (await messages(b, token, own.conversation_id))[1]
        assert reply["status"] == "incomplete" and reply["content"]
        assert [t["index"] for t in own.tokens] == list(range(len(own.tokens)))
        assert reply["content"] == own.text

        # The reader D released re-attaches through B where it was cut, to A's reply's end.
        rest = await reattach(b, token, other.conversation_id, last_event_id=on_d.events[-1].id)
        assert rest.terminal.event == "done"
        assert rest.tokens[0]["index"] == on_d.tokens[-1]["index"] + 1
        posted = await asyncio.wait_for(other_task, 10)
        assert posted.text == expected_text(150)
        cut = on_d.tokens[-1]["index"] + 1
        assert expected_text(cut) + rest.text == expected_text(150)


# --- limits and rotation shared through Redis and PostgreSQL --------------------------------------


async def test_sixth_login_in_a_minute_over_both_processes_is_429(cluster):
    ip = client_ip()
    async with client(cluster.a) as reg:
        user = await register(reg)
    body = {"email": user["email"], "password": PASSWORD}
    async with client(cluster.a, ip) as a, client(cluster.b, ip) as b:
        for i in range(5):
            resp = await (a if i % 2 == 0 else b).post("/api/v1/auth/login", json=body)
            assert resp.status_code == 200, (i, resp.text)
        resp = await b.post("/api/v1/auth/login", json=body)
        assert resp.status_code == 429
        assert resp.json()["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(resp.headers["Retry-After"]) >= 1
        resp = await a.post("/api/v1/auth/login", json=body)
        assert resp.status_code == 429


async def test_twenty_simultaneous_refreshes_over_both_processes_one_wins(cluster):
    async with client(cluster.a) as reg:
        user = await register(reg)
    body = {"refresh_token": user["refresh_token"]}
    clients = [client(cluster.a if i % 2 == 0 else cluster.b) for i in range(20)]
    try:
        results = await asyncio.gather(
            *(c.post("/api/v1/auth/refresh", json=body) for c in clients)
        )
    finally:
        for c in clients:
            await c.aclose()
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] + [401] * 19, statuses
    assert all(r.json()["code"] == "INVALID_TOKEN" for r in results if r.status_code == 401)


async def test_open_streams_of_one_user_are_capped_over_both_processes(cluster):
    """ALICE_USER_MAX_STREAMS (20) counts a user's open streams on A and B together: with 20
    open over both, the next on either is a 429 (`Retry-After: 1`)."""
    async with client(cluster.a) as a, client(cluster.b) as b:
        token = (await register(a))["access_token"]
        first = background_send(a, token, "[[tokens:150]] [[delay:50]]")
        await eventually(lambda: first[0].events, timeout=10)
        cid = first[0].conversation_id
        streams = [first]
        for i in range(19):
            through = b if i % 2 == 0 else a
            streams.append(
                background_stream(
                    through, "GET", f"{CHAT}/conversations/{cid}/stream", headers=auth(token)
                )
            )
        await eventually(lambda: all(s.status for s, _ in streams), timeout=30)
        assert [s.status for s, _ in streams] == [200] * 20
        for through in (a, b):
            refused = await through.get(f"{CHAT}/conversations/{cid}/stream", headers=auth(token))
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "1"
        stopped = await b.post(f"{CHAT}/conversations/{cid}/stop", headers=auth(token))
        assert stopped.status_code in (200, 202)
        await asyncio.wait_for(asyncio.gather(*(t for _, t in streams)), 30)
