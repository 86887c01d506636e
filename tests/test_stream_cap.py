"""SPEC section 11: one user holds at most ALICE_USER_MAX_STREAMS (20) open streams at once; the
next is a 429 with `Retry-After: 1`, and a stream frees its slot however it ends: done, the
client gone, an error. On a real socket (a disconnect needs one), on every backend (the
PostgreSQL run counts the slots in Redis)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from alice.api.deps import STREAM_SLOTS
from tests.chatkit import CHAT, Stream, background_send, background_stream, eventually
from tests.conftest import bearer as auth
from tests.conftest import serve

CAP = 20


async def open_streams(
    client: httpx.AsyncClient, token: str, content: str, count: int
) -> list[tuple[Stream, asyncio.Task[Stream]]]:
    """One POST /message and `count - 1` re-attaches to its reply, all open at once."""
    first = background_send(client, token, content)
    await eventually(lambda: first[0].events)
    cid = first[0].conversation_id
    streams = [first]
    for _ in range(count - 1):
        streams.append(
            background_stream(
                client, "GET", f"{CHAT}/conversations/{cid}/stream", headers=auth(token)
            )
        )
    await eventually(lambda: all(s.status for s, _ in streams), timeout=30)
    assert [s.status for s, _ in streams] == [200] * count, [s.body for s, _ in streams]
    return streams


async def one_more(client: httpx.AsyncClient, token: str, cid: Any) -> httpx.Response:
    return await client.get(f"{CHAT}/conversations/{cid}/stream", headers=auth(token))


@pytest.fixture
async def capped(settings: Any, ai_settings: dict[str, Any]) -> Any:
    async with serve(settings.model_copy(update={**ai_settings, "shutdown_grace_seconds": 1})) as (
        app,
        url,
    ):
        yield app, url


async def held(app: Any, user_id: str) -> int:
    return int(await app.state.services.slots.held(STREAM_SLOTS, user_id))


async def new_user(app: Any) -> tuple[str, str]:
    import uuid

    pair = await app.state.services.auth.register(
        f"cap-{uuid.uuid4().hex[:10]}@example.com", "SecurePass123", None
    )
    me = await app.state.services.auth.authenticate(pair.access_token)
    return pair.access_token, str(me.id)


@pytest.mark.parametrize("ending", ["done", "disconnect", "error"])
async def test_twenty_first_open_stream_is_429_and_twenty_open_again_after_they_end(
    capped: Any, ending: str
) -> None:
    app, url = capped
    token, user_id = await new_user(app)
    content = {
        "done": "[[tokens:80]][[delay:100]] ends",
        "disconnect": "[[tokens:300]][[delay:100]] runs on",
        "error": "[[tokens:300]][[delay:100]][[error_after:25]] fails",
    }[ending]
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
        streams = await open_streams(client, token, content, CAP)
        cid = streams[0][0].conversation_id
        assert await held(app, user_id) == CAP

        refused = await one_more(client, token, cid)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "RATE_LIMIT_EXCEEDED"
        assert refused.headers["retry-after"] == "1"

        # Another user is not concerned.
        other_token, _ = await new_user(app)
        other = await client.post(
            f"{CHAT}/message", headers=auth(other_token), json={"content": "[[tokens:2]] hi"}
        )
        assert other.status_code == 200

        if ending == "disconnect":
            await client.aclose()
            for _, task in streams:
                task.cancel()
            await asyncio.gather(*(t for _, t in streams), return_exceptions=True)
        else:
            ended = await asyncio.wait_for(asyncio.gather(*(t for _, t in streams)), 30)
            terminal = {"done": "done", "error": "error"}[ending]
            assert {s.events[-1].event for s in ended} == {terminal}

    # The server frees each slot after the stream's last byte: wait for that, then 20 again.
    await _until_released(app, user_id)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        again = await open_streams(client, token, "[[tokens:20]][[delay:50]] again", CAP)
        assert await held(app, user_id) == CAP
        await asyncio.wait_for(asyncio.gather(*(t for _, t in again)), 30)
    await _until_released(app, user_id)


async def _until_released(app: Any, user_id: str) -> None:
    async def free() -> bool:
        return await held(app, user_id) == 0

    # A release that fails (Redis slow to answer) is made good by the lease: 30 s at most.
    await eventually(free, timeout=40)


async def test_refused_and_failed_requests_hold_no_slot(capped: Any) -> None:
    """A 404 or 422 from a stream route gives its slot back at once."""
    app, url = capped
    token, user_id = await new_user(app)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(CAP + 5):
            missing = await client.get(
                f"{CHAT}/conversations/00000000-0000-4000-8000-000000000000/stream",
                headers=auth(token),
            )
            assert missing.status_code == 404
        assert await held(app, user_id) == 0


async def test_cap_is_off_with_the_rate_limits(settings: Any, ai_settings: dict[str, Any]) -> None:
    off = settings.model_copy(
        update={**ai_settings, "rate_limit_enabled": False, "user_max_streams": 2}
    )
    async with serve(off) as (app, url), httpx.AsyncClient(base_url=url, timeout=30) as client:
        token, _ = await new_user(app)
        streams = await open_streams(client, token, "[[tokens:10]][[delay:50]] x", 4)
        await asyncio.wait_for(asyncio.gather(*(t for _, t in streams)), 30)


async def test_cap_follows_the_setting(settings: Any, ai_settings: dict[str, Any]) -> None:
    two = settings.model_copy(update={**ai_settings, "user_max_streams": 2})
    async with serve(two) as (app, url), httpx.AsyncClient(base_url=url, timeout=30) as client:
        token, _ = await new_user(app)
        streams = await open_streams(client, token, "[[tokens:20]][[delay:50]] x", 2)
        refused = await one_more(client, token, streams[0][0].conversation_id)
        assert refused.status_code == 429
        await asyncio.wait_for(asyncio.gather(*(t for _, t in streams)), 30)
