"""alice.client against a real `alice serve` process, through a TCP proxy that can cut a
connection mid-reply (the client must resume: the text it received is the stored message,
exactly once)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from alice.client import (
    ERRORS,
    AliceClient,
    ApiError,
    ConversationEventData,
    DoneEventData,
    Event,
    TokenEventData,
)
from alice.core.errors import ErrorCode
from tests.conftest import PASSWORD
from tests.test_readme import free_port, start_server


@dataclass
class Proxy:
    """A TCP proxy in front of the server. `cut(response_bytes_so_far)` is asked on every
    chunk the server sends; True closes that connection at once, both ways, and the chunk
    that made it true is dropped."""

    upstream_port: int
    cut: Callable[[bytes], bool] = lambda _: False
    port: int = 0
    cuts: int = 0
    requests: list[bytes] = field(default_factory=list)
    _server: asyncio.Server | None = None

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        done = asyncio.Event()

        async def upstream() -> None:
            try:
                while chunk := await reader.read(65536):
                    self.requests.append(chunk)
                    up_writer.write(chunk)
                    await up_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                done.set()

        async def downstream() -> None:
            seen = b""
            try:
                while chunk := await up_reader.read(65536):
                    if self.cut(seen + chunk):
                        self.cuts += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    seen += chunk
                    writer.write(chunk)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                done.set()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await done.wait()
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("client")
    port = free_port()
    proc = start_server(
        Path(tmp), port, ALICE_MOCK_TOKEN_DELAY_MS="40", ALICE_RATE_LIMIT_ENABLED="false"
    )
    yield port
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
async def proxy(server: int) -> AsyncIterator[Proxy]:
    p = await Proxy(server).start()
    yield p
    await p.close()


@pytest.fixture
async def alice(proxy: Proxy) -> AsyncIterator[AliceClient]:
    async with AliceClient(f"http://127.0.0.1:{proxy.port}", retry_delay=0.1) as client:
        await client.register(f"client-{uuid.uuid4().hex[:10]}@example.com", PASSWORD)
        yield client


def once(predicate: Callable[[bytes], bool]) -> Callable[[bytes], bool]:
    """A cut that happens to the first response that meets the predicate, and no other."""
    fired = False

    def cut(seen: bytes) -> bool:
        nonlocal fired
        if fired or not predicate(seen):
            return False
        fired = True
        return True

    return cut


async def collect(events: AsyncIterator[Event[Any]]) -> list[Event[Any]]:
    return [e async for e in events]


def check_exactly_once(events: list[Event[Any]]) -> str:
    """The events of one reply: no id twice, seq without a gap, token indexes 0..n-1."""
    seqs = [int(e.id.rsplit(":", 1)[1]) for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs
    tokens = [e.data for e in events if isinstance(e.data, TokenEventData)]
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert isinstance(events[0].data, ConversationEventData)
    assert isinstance(events[-1].data, DoneEventData) and events[-1].terminal
    return "".join(t.content for t in tokens)


async def stored_reply(alice: AliceClient, conversation_id: Any) -> list[Any]:
    return [m async for m in alice.messages(conversation_id)]


async def test_send_resumes_after_a_cut_mid_reply_and_text_is_stored_exactly_once(alice, proxy):
    proxy.cut = once(lambda seen: seen.count(b"event: token") >= 3)
    events = await collect(alice.send("Tell me something, please, in many words"))
    assert proxy.cuts == 1
    assert any(b"/stream" in r and b"Last-Event-ID" in r for r in proxy.requests)
    text = check_exactly_once(events)
    conversation_id = events[0].data.conversation_id
    stored = await stored_reply(alice, conversation_id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].status == "complete" and stored[1].content == text
    assert events[-1].data.last_index == len([e for e in events if e.event == "token"]) - 1


async def test_a_retry_before_the_first_event_sends_the_message_once(alice, proxy):
    # The server has taken the message when its answer starts; the answer never arrives.
    proxy.cut = once(lambda seen: b"text/event-stream" in seen)
    events = await collect(alice.send("Hello once"))
    assert proxy.cuts == 1
    assert sum(r.count(b"Idempotency-Key") for r in proxy.requests) >= 2
    text = check_exactly_once(events)
    conversations = [c async for c in alice.conversations()]
    assert len(conversations) == 1
    stored = await stored_reply(alice, conversations[0].id)
    assert [(m.role, m.content) for m in stored] == [("user", "Hello once"), ("assistant", text)]


async def test_send_to_a_conversation_and_reattach(alice):
    first = await collect(alice.send("One"))
    conversation_id = first[0].data.conversation_id
    second = await collect(alice.send("Two", conversation_id))
    assert second[0].data.conversation_id == conversation_id and not second[0].data.is_new
    # The newest reply again, from its start; after its terminal event, nothing.
    again = await collect(alice.reattach(conversation_id))
    assert [e.id for e in again] == [e.id for e in second]
    assert await collect(alice.reattach(conversation_id, second[-1].id)) == []


async def test_stop_keeps_the_text_shown(alice):
    stream = alice.send("A long reply please " * 5)
    seen: list[Event[Any]] = []
    async for event in stream:
        seen.append(event)
        if event.event == "token" and event.data.index == 1:
            break
    await stream.aclose()
    conversation_id = seen[0].data.conversation_id
    stopped = await alice.stop(conversation_id, last_index=1)
    assert stopped is not None and stopped.status == "stopped"
    assert stopped.content == "".join(e.data.content for e in seen if e.event == "token")
    assert await alice.stop(conversation_id) is None


async def test_lists_iterate_over_keyset_pages(alice):
    ids = []
    for i in range(3):
        events = await collect(alice.send(f"conversation {i}"))
        ids.append(events[0].data.conversation_id)
    listed = [c.id async for c in alice.conversations(limit=1)]
    assert listed == list(reversed(ids))
    await collect(alice.send("more", ids[0]))
    messages = [m async for m in alice.messages(ids[0], limit=1)]
    assert [m.role for m in messages] == ["user", "assistant"] * 2
    assert len({m.id for m in messages}) == 4


async def test_access_token_is_refreshed_by_itself(alice):
    me = await alice.me()
    first_refresh = alice.refresh_token
    alice.access_token = alice.access_token[:-4] + "AAAA"  # refused: INVALID_TOKEN
    assert (await alice.me()).id == me.id
    assert alice.refresh_token != first_refresh
    # Near its end, the access token is refreshed before the request.
    second_refresh = alice.refresh_token
    alice.access_expires_at = 0  # as if 15 minutes had passed (the token itself is still valid)
    assert (await alice.me()).id == me.id
    assert alice.refresh_token != second_refresh
    # A stream's request too.
    alice.access_token = alice.access_token[:-4] + "AAAA"
    events = await collect(alice.send("after a refresh"))
    assert events[-1].event == "done"


async def test_errors_are_one_class_per_code(alice, proxy):
    assert {c.value for c in ErrorCode} <= set(ERRORS)
    assert len({cls for cls in ERRORS.values()}) == len(ERRORS)
    email = f"twice-{uuid.uuid4().hex[:8]}@example.com"
    async with AliceClient(f"http://127.0.0.1:{proxy.port}") as other:
        await other.register(email, PASSWORD)
        with pytest.raises(ERRORS["EMAIL_ALREADY_EXISTS"]) as caught:
            await other.register(email, PASSWORD)
        assert isinstance(caught.value, ApiError) and caught.value.status_code == 409
        assert caught.value.request_id
        from alice import client as module

        with pytest.raises(module.AuthenticationFailedError):
            await other.login(email, "WrongPass123")
        with pytest.raises(module.ValidationError) as invalid:
            await collect(other.send(""))
        assert invalid.value.errors[0]["field"] == "body.content"
        with pytest.raises(module.ConversationNotFoundError):
            await collect(other.send("hi", uuid.uuid4()))
