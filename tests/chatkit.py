"""Helpers for chat tests: send a message and read its stream with a third-party SSE parser."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

CHAT = "/api/v1/chat"


@dataclass
class Stream:
    status: int
    headers: httpx.Headers
    events: list[ServerSentEvent] = field(default_factory=list)
    body: Any = None

    @property
    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def data(self, i: int) -> dict[str, Any]:
        return json.loads(self.events[i].data)

    @property
    def tokens(self) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.events if e.event == "token"]

    @property
    def text(self) -> str:
        return "".join(t["content"] for t in self.tokens)

    @property
    def terminal(self) -> ServerSentEvent:
        return self.events[-1]

    @property
    def message_id(self) -> uuid.UUID:
        return uuid.UUID(self.data(0)["message_id"])

    @property
    def conversation_id(self) -> uuid.UUID:
        return uuid.UUID(self.data(0)["conversation_id"])


async def read_stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    json_body: Any = None,
    stop_after_tokens: int | None = None,
    params: dict[str, str] | None = None,
) -> Stream:
    """Read an SSE response; with `stop_after_tokens`, close the connection after that many
    token events, as a client that goes away."""
    kwargs: dict[str, Any] = {"headers": headers}
    if json_body is not None:
        kwargs["json"] = json_body
    if params:
        kwargs["params"] = params
    async with aconnect_sse(client, method, url, **kwargs) as source:
        resp = source.response
        out = Stream(resp.status_code, resp.headers)
        if resp.status_code != 200 or "text/event-stream" not in resp.headers.get(
            "content-type", ""
        ):
            await resp.aread()
            out.body = resp.json() if resp.content else None
            return out
        tokens = 0
        async for event in source.aiter_sse():
            out.events.append(event)
            if event.event == "token":
                tokens += 1
                if stop_after_tokens is not None and tokens >= stop_after_tokens:
                    break
        return out


async def send(
    client: httpx.AsyncClient,
    token: str,
    content: str,
    conversation_id: uuid.UUID | str | None = None,
    *,
    stop_after_tokens: int | None = None,
    extra_headers: dict[str, str] | None = None,
) -> Stream:
    body: dict[str, Any] = {"content": content}
    if conversation_id is not None:
        body["conversation_id"] = str(conversation_id)
    return await read_stream(
        client,
        "POST",
        f"{CHAT}/message",
        headers={"Authorization": f"Bearer {token}", **(extra_headers or {})},
        json_body=body,
        stop_after_tokens=stop_after_tokens,
    )


async def reattach(
    client: httpx.AsyncClient,
    token: str,
    conversation_id: uuid.UUID | str,
    last_event_id: str | None = None,
    after: str | None = None,
    stop_after_tokens: int | None = None,
) -> Stream:
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return await read_stream(
        client,
        "GET",
        f"{CHAT}/conversations/{conversation_id}/stream",
        headers=headers,
        params={"after": after} if after is not None else None,
        stop_after_tokens=stop_after_tokens,
    )


async def messages(client: httpx.AsyncClient, token: str, conversation_id: Any) -> list[dict]:
    resp = await client.get(
        f"{CHAT}/conversations/{conversation_id}/messages",
        headers={"Authorization": f"Bearer {token}"},
        params={"limit": 100},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]


async def eventually(predicate, timeout: float = 5.0, interval: float = 0.02) -> Any:  # type: ignore[no-untyped-def]
    """Poll an async or plain predicate until it returns a truthy value."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() >= until:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def background_stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    json_body: Any = None,
    params: dict[str, str] | None = None,
) -> tuple[Stream, asyncio.Task[Stream]]:
    """Read an SSE response in a background task. Its events land in the returned Stream as
    they arrive (`status` is 0 until the response starts); await the task for the end."""
    out = Stream(0, httpx.Headers())

    async def run() -> Stream:
        kwargs: dict[str, Any] = {"headers": headers}
        if json_body is not None:
            kwargs["json"] = json_body
        if params:
            kwargs["params"] = params
        async with aconnect_sse(client, method, url, **kwargs) as source:
            out.headers = source.response.headers
            if source.response.status_code != 200:
                # The status is set only once the body is read: a caller waiting for the
                # status then reads the body too.
                await source.response.aread()
                out.body = source.response.json() if source.response.content else None
                out.status = source.response.status_code
                return out
            out.status = source.response.status_code
            async for event in source.aiter_sse():
                out.events.append(event)
        return out

    return out, asyncio.create_task(run())


def background_send(
    client: httpx.AsyncClient,
    token: str,
    content: str,
    conversation_id: uuid.UUID | str | None = None,
) -> tuple[Stream, asyncio.Task[Stream]]:
    """`send`, read in the background (see `background_stream`)."""
    body: dict[str, Any] = {"content": content}
    if conversation_id is not None:
        body["conversation_id"] = str(conversation_id)
    return background_stream(
        client,
        "POST",
        f"{CHAT}/message",
        headers={"Authorization": f"Bearer {token}"},
        json_body=body,
    )


def nonce() -> str:
    """A tag that makes a message (and so its provider request) recognisable."""
    return f"n{uuid.uuid4().hex[:10]}"


def provider_request(fake: Any, tag: str) -> Any:
    """The fake's record of the request whose last user message carries `tag`."""
    found = [r for r in fake.requests if tag in r.last_user_text]
    assert found, f"no provider request with {tag}"
    return found[-1]
