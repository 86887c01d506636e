"""Reading the provider's stream alone: what the SDK costs per event against the same bytes
read straight from aiohttp, N streams at once against the fake Anthropic server.

    python -m bench.provider_read [--streams 200] [--events 100] [--rounds 3]

Three readers of the same streams, each round in turn:

- `provider`: `AnthropicProvider.stream`, as a reply reads it (the SDK's request, its aiohttp
  transport through httpx2, its SSE decoding and JSON, our event filter);
- `sdk-raw`: the SDK's request and transport, the body read raw (`with_streaming_response`)
  and split into events here;
- `aiohttp`: one `aiohttp.ClientSession` and the same split, as the bare relay
  (`bench/bare.py`) reads it.

Prints this process's CPU per event (µs) for each, the median of the rounds. The fake runs
in its own process (on core 1 when it can be pinned; this one on core 0): its CPU is not
counted.

    python -m bench.provider_read --memory [--streams 500] [--rounds 2]

prints instead the growth of resident memory per open stream for each reader (KiB: the peak
while `streams` streams of 100 events 20 ms apart are open, less the process's memory after a
warm-up, over `streams`), each round of each reader in a fresh process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx

from alice.core.config import Settings
from alice.services.ai.anthropic import AnthropicProvider
from alice.services.ai.base import ChatTurn, TextDelta
from bench.procs import LOAD_CORE, REPO, SERVER_CORE, can_pin, free_port, pinned

_HEADERS = {"x-api-key": "bench-key", "anthropic-version": "2023-06-01"}


def _prompt(i: int, events: int) -> str:
    return f"Stream {i} [[tokens:{events}]] [[delay:20]]"


def _split(pending: bytes, chunk: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """The complete events in `pending + chunk`, and what is left of an unfinished one."""
    *blocks, rest = (pending + chunk).split(b"\n\n")
    events = []
    for block in blocks:
        start = block.find(b"data: ")
        if start >= 0:
            events.append(json.loads(block[start + 6 :]))
    return events, rest


async def _provider(provider: AnthropicProvider, i: int, events: int) -> int:
    n = 0
    async for event in provider.stream("", [ChatTurn("user", _prompt(i, events))]):
        if type(event) is TextDelta:
            n += 1
    return n


async def _sdk_raw(provider: AnthropicProvider, i: int, events: int) -> int:
    n = 0
    async with provider.client.messages.with_streaming_response.create(
        model="bench-model",
        max_tokens=1024,
        stream=True,
        messages=[{"role": "user", "content": _prompt(i, events)}],
    ) as response:
        pending = b""
        async for chunk in response.http_response.aiter_raw():
            parsed, pending = _split(pending, chunk)
            n += sum(1 for e in parsed if e.get("type") == "content_block_delta")
    return n


async def _aiohttp(session: aiohttp.ClientSession, url: str, i: int, events: int) -> int:
    body = {
        "model": "bench-model",
        "max_tokens": 1024,
        "stream": True,
        "messages": [{"role": "user", "content": _prompt(i, events)}],
    }
    n = 0
    async with session.post(f"{url}/v1/messages", json=body, headers=_HEADERS) as response:
        pending = b""
        async for chunk in response.content.iter_any():
            parsed, pending = _split(pending, chunk)
            n += sum(1 for e in parsed if e.get("type") == "content_block_delta")
    return n


def _cpu() -> float:
    return time.process_time()


def _clients(url: str) -> tuple[AnthropicProvider, aiohttp.ClientSession]:
    """The provider as ALICE builds it, and the relay's aiohttp session, for the fake at `url`."""
    settings = Settings(
        env="test",
        secret_key="k" * 40,
        anthropic_api_key="bench-key",
        anthropic_base_url=url,
        ai_model="bench-model",
    )
    provider = AnthropicProvider(settings, max_retries=0)
    return provider, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def _round(name: str, url: str, streams: int, events: int) -> float:
    provider, session = _clients(url)
    readers: dict[str, Callable[[int], Awaitable[int]]] = {
        "provider": lambda i: _provider(provider, i, events),
        "sdk-raw": lambda i: _sdk_raw(provider, i, events),
        "aiohttp": lambda i: _aiohttp(session, url, i, events),
    }
    read = readers[name]
    try:
        await asyncio.gather(*(read(i) for i in range(20)))  # connections and caches warm
        before = _cpu()
        counts = await asyncio.gather(*(read(i) for i in range(streams)))
        spent = _cpu() - before
    finally:
        await provider.aclose()
        await session.close()
    if any(c != events for c in counts):
        raise RuntimeError(f"{name}: expected {events} deltas a stream, got {set(counts)}")
    # Each stream is `events` deltas plus six other events (message_start, ping, ...).
    return spent / (streams * (events + 6)) * 1e6


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _memory_round(name: str, url: str, streams: int) -> float:
    """KiB of resident memory per open stream of reader `name` (in a process of its own)."""
    provider, session = _clients(url)
    readers: dict[str, Callable[[int, int], Awaitable[int]]] = {
        "provider": lambda i, events: _provider(provider, i, events),
        "sdk-raw": lambda i, events: _sdk_raw(provider, i, events),
        "aiohttp": lambda i, events: _aiohttp(session, url, i, events),
    }
    read = readers[name]
    try:
        await asyncio.gather(*(read(i, 5) for i in range(50)))  # connections and caches warm
        base = peak = _rss_kib()
        tasks = [asyncio.ensure_future(read(i, 100)) for i in range(streams)]
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0.05)
            peak = max(peak, _rss_kib())
        counts = [t.result() for t in tasks]
    finally:
        await provider.aclose()
        await session.close()
    if any(c != 100 for c in counts):
        raise RuntimeError(f"{name}: expected 100 deltas a stream, got {set(counts)}")
    return (peak - base) / streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=None)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--memory", action="store_true", help="resident memory per stream")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # one round, in a child
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        import uvloop

        kib = uvloop.run(_memory_round(args.memory_of, args.url, args.streams))
        print(f"{kib:.2f}")
        return
    if args.streams is None:
        args.streams = 500 if args.memory else 200
    if args.rounds is None:
        args.rounds = 2 if args.memory else 3
    port = free_port()
    argv = [sys.executable, str(REPO / "tests" / "fakes" / "anthropic_server.py")]
    argv += ["--port", str(port), "--max-records", "50"]
    if can_pin():
        os.sched_setaffinity(0, {SERVER_CORE})
        argv = pinned(argv, LOAD_CORE)
    fake = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/_fake/stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        import uvloop

        results: dict[str, list[float]] = {"provider": [], "sdk-raw": [], "aiohttp": []}
        if args.memory:
            for _ in range(args.rounds):
                for name, runs in results.items():
                    child = [sys.executable, "-m", "bench.provider_read", "--memory-of", name]
                    child += ["--url", url, "--streams", str(args.streams)]
                    done = subprocess.run(child, capture_output=True, check=True, cwd=REPO)
                    runs.append(float(done.stdout))
            for name, runs in results.items():
                shown = " / ".join(f"{r:.1f}" for r in runs)
                print(f"{name}: {statistics.median(runs):.1f} KiB per open stream ({shown})")
            return
        for _ in range(args.rounds):
            for name, runs in results.items():
                runs.append(uvloop.run(_round(name, url, args.streams, args.events)))
        for name, runs in results.items():
            shown = " / ".join(f"{r:.1f}" for r in runs)
            print(f"{name}: {statistics.median(runs):.1f} us of CPU per event ({shown})")
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    main()
