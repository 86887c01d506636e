"""The baselines: a bare Starlette app served by uvicorn exactly as `alice serve` serves ALICE.

`GET /json` answers a JSON body shaped like ALICE's UserResponse; `GET /sse?n=50&delay=20`
sends the events of an ALICE reply (a `conversation` event, `n` `token` events `delay` ms
apart, then `done`) in ALICE's wire format, at the pace of the fake Anthropic server (the first
token at once, then one every `delay` ms). `GET /health` is there for the readiness check.

`GET /relay?n=50&delay=20&i=0` is the bare relay, the fair limit of ALICE's reply path: it asks
the upstream (the fake Anthropic server, `--upstream`) for the same reply ALICE's benchmark asks
for, reads its stream with aiohttp (one session, no connection cap) and writes each text delta
as an SSE `token` event in ALICE's wire format; no database, auth, log or metrics.
`GET /relay-sdk?…` is the same relay reading upstream through the official SDK exactly as ALICE
reads it (`AnthropicProvider.stream`): what the SDK costs on its own, which ALICE must pay and
the bare relay does not.

Run: `python -m bench.bare --port P [--upstream http://127.0.0.1:FAKE_PORT]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

USER = {
    "id": "6f0c8a1e-9a7e-4a47-8d3c-6c1b4f0e2a11",
    "email": "bench@example.com",
    "display_name": "bench",
    "is_active": True,
    "created_at": "2026-01-01T00:00:00.000000Z",
}
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _dumps(data: object) -> str:
    return json.dumps(data, separators=(", ", ": "), ensure_ascii=False)


async def json_route(request: Request) -> Response:
    return JSONResponse(USER)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def sse_route(request: Request) -> Response:
    n = min(int(request.query_params.get("n", "50")), 10_000)
    delay = float(request.query_params.get("delay", "20")) / 1000
    mid = str(uuid.uuid4())
    cid = str(uuid.uuid4())

    async def events() -> AsyncIterator[bytes]:
        conversation = _dumps({"conversation_id": cid, "is_new": True, "message_id": mid})
        yield f"retry: 1000\nid: {mid}:1\nevent: conversation\ndata: {conversation}\n\n".encode()
        for i in range(n):
            if i and delay:
                await asyncio.sleep(delay)
            data = _dumps({"content": f"tok{i} ", "index": i})
            yield f"id: {mid}:{i + 2}\nevent: token\ndata: {data}\n\n".encode()
        done = _dumps(
            {
                "message_id": mid,
                "conversation_id": cid,
                "total_tokens": n + 11,
                "status": "complete",
                "last_index": n - 1,
            }
        )
        yield f"id: {mid}:{n + 2}\nevent: done\ndata: {done}\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)


UPSTREAM = {"url": "http://127.0.0.1:8001"}
_UPSTREAM_HEADERS = {
    "x-api-key": "bench-key",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
    "accept": "application/json",
}


def _prompt(request: Request) -> str:
    """The message ALICE's benchmark sends for its stream `i` (bench/client.py), without the
    system prompt and history ALICE adds."""
    n = min(int(request.query_params.get("n", "50")), 10_000)
    delay = int(request.query_params.get("delay", "20"))
    i = request.query_params.get("i", "0")
    return f"Stream {i} [[tokens:{n}]] [[delay:{delay}]]"


def _relayed(texts: AsyncIterator[list[str]]) -> Response:
    """The reply's SSE events in ALICE's wire format, the text deltas as they come: a
    `conversation` event, a `token` event each (the deltas of one batch in one write), then
    `done`."""
    mid = str(uuid.uuid4())
    cid = str(uuid.uuid4())

    async def events() -> AsyncIterator[bytes]:
        conversation = _dumps({"conversation_id": cid, "is_new": True, "message_id": mid})
        yield f"retry: 1000\nid: {mid}:1\nevent: conversation\ndata: {conversation}\n\n".encode()
        seq = 1
        index = 0
        async for batch in texts:
            out = []
            for text in batch:
                seq += 1
                data = _dumps({"content": text, "index": index})
                index += 1
                out.append(f"id: {mid}:{seq}\nevent: token\ndata: {data}\n\n".encode())
            if out:
                yield b"".join(out)
        done = _dumps(
            {
                "message_id": mid,
                "conversation_id": cid,
                "total_tokens": index + 11,
                "status": "complete",
                "last_index": index - 1,
            }
        )
        yield f"id: {mid}:{seq + 1}\nevent: done\ndata: {done}\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)


async def relay_route(request: Request) -> Response:
    session: aiohttp.ClientSession = request.app.state.session
    body = {
        "model": "bench-model",
        "max_tokens": 1024,
        "stream": True,
        "messages": [{"role": "user", "content": _prompt(request)}],
    }

    async def texts() -> AsyncIterator[list[str]]:
        # Each chunk read from upstream: the text deltas of its complete events.
        pending = b""
        url = f"{UPSTREAM['url']}/v1/messages"
        async with session.post(url, json=body, headers=_UPSTREAM_HEADERS) as upstream:
            async for chunk in upstream.content.iter_any():
                pending += chunk
                *blocks, pending = pending.split(b"\n\n")
                batch = []
                for block in blocks:
                    start = block.find(b"data: ")
                    if start < 0:
                        continue
                    event = json.loads(block[start + 6 :])
                    if event.get("type") == "content_block_delta":
                        batch.append(event["delta"]["text"])
                yield batch

    return _relayed(texts())


async def relay_sdk_route(request: Request) -> Response:
    """The relay reading upstream through the official SDK exactly as ALICE does
    (`AnthropicProvider.stream`: the SDK's request, its aiohttp transport, its SSE decoding),
    one write per text delta: the SDK's own cost, which the bare relay does not pay."""
    from alice.services.ai.base import ChatTurn, TextDelta

    provider = _sdk_provider(request.app)
    turns = [ChatTurn("user", _prompt(request))]

    async def texts() -> AsyncIterator[list[str]]:
        async for event in provider.stream("", turns):
            if type(event) is TextDelta:
                yield [event.text]

    return _relayed(texts())


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # No cap on connections (limit=0), as ALICE's provider client has none.
    app.state.session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    )
    app.state.provider = None  # made by the first /relay-sdk request (`_sdk_provider`)
    try:
        yield
    finally:
        await app.state.session.close()
        if app.state.provider is not None:
            await app.state.provider.aclose()


app = Starlette(
    routes=[
        Route("/json", json_route),
        Route("/sse", sse_route),
        Route("/relay", relay_route),
        Route("/relay-sdk", relay_sdk_route),
        Route("/health", health),
    ],
    lifespan=lifespan,
)


def _sdk_provider(app: Starlette) -> Any:
    """ALICE's provider client (the official SDK on its aiohttp transport, no connection cap),
    for `/relay-sdk`, against the upstream. Made at the first request of that route, not at
    start-up: the harness restarts this app for each target, and a process serving `/sse` or
    `/relay` must not carry ALICE's and the SDK's modules (their objects would be walked by
    every full collection of the garbage collector, and slow the baselines down)."""
    if app.state.provider is None:
        from alice.core.config import Settings
        from alice.services.ai.anthropic import AnthropicProvider

        settings = Settings(
            env="test",
            secret_key="k" * 40,
            anthropic_api_key="bench-key",
            anthropic_base_url=UPSTREAM["url"],
            ai_model="bench-model",
            ai_max_tokens=1024,
        )
        app.state.provider = AnthropicProvider(settings, max_retries=0)
    return app.state.provider


def _alice_http() -> object:
    """The HTTP protocol `alice serve` gives uvicorn (its `http=`), when it names one."""
    try:
        from alice.core.protocol import http_protocol
    except ImportError:
        return "auto"
    return http_protocol()


def main() -> None:
    parser = argparse.ArgumentParser(description="bare Starlette baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default=UPSTREAM["url"], help="the fake Anthropic server")
    args = parser.parse_args()
    UPSTREAM["url"] = args.upstream.rstrip("/")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The same uvicorn settings as `alice serve` (alice/cli.py): one worker, the event loop
    # left to uvicorn (uvloop when installed), ALICE's HTTP protocol, no access log, no proxy
    # headers. Only the app differs.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        proxy_headers=False,
        access_log=False,
        log_config=None,
        http=_alice_http(),  # type: ignore[arg-type]
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
