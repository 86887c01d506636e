"""The SSE response layer alone: sse-starlette's EventSourceResponse against ALICE's plain
ASGI FeedResponse, sending the same frames to a no-op ASGI `send`, N streams at once.

    python -m bench.sse_layer [--streams 1000] [--events 50] [--rounds 3]

Prints the CPU per event (µs) and the tasks per open stream of each, the median of the
rounds. Nothing else runs: this is the cost of the layer, not of a reply.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse

from alice.api.sse import FeedResponse
from alice.services.eventlog.base import Entry
from alice.services.eventlog.memory import FrameFollower, GenLog
from alice.services.replies import ReplyFeed


async def _send(message: Any) -> None:
    return None


def _receive_factory() -> Any:
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    return receive


SCOPE = {"type": "http", "method": "POST", "path": "/", "headers": []}


async def run(kind: str, streams: int, events: int) -> tuple[float, float]:
    logs = [GenLog(events + 2, uuid.uuid4()) for _ in range(streams)]
    for log in logs:
        log.append(Entry(1, "conversation", '{"conversation_id": "c"}'))

    def response(log: GenLog) -> Any:
        if kind == "plain":
            feed = ReplyFeed(FrameFollower(log, 0), ping_seconds=15)
            return FeedResponse(feed)

        async def frames() -> AsyncIterator[bytes]:
            reader = FrameFollower(log, 0)
            while not reader.ended:
                chunk, _ = reader.take()
                if chunk:
                    yield chunk
                else:
                    await asyncio.wait([reader.changed()])

        return EventSourceResponse(frames(), ping=15, sep="\n")

    tasks = [asyncio.create_task(response(log)(SCOPE, _receive_factory(), _send)) for log in logs]
    await asyncio.sleep(0.05)
    per_stream = (len(asyncio.all_tasks()) - 1) / streams
    started = time.process_time()
    for i in range(events):
        for log in logs:
            if i == events - 1:
                log.append(Entry(i + 2, "done", '{"status": "complete"}'))
            else:
                log.append(Entry(i + 2, "token", f'{{"content": "tok ", "index": {i}}}'))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    cpu = time.process_time() - started
    return cpu / (streams * events) * 1e6, per_stream


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for kind in ("sse-starlette", "plain"):
        results = [asyncio.run(run(kind, args.streams, args.events)) for _ in range(args.rounds)]
        cpu = statistics.median(r[0] for r in results)
        print(f"{kind}: {cpu:.1f} µs CPU per event, {results[0][1]:.0f} tasks per open stream")


if __name__ == "__main__":
    main()
