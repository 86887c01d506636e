"""Load on Redis of the reply event log: N running replies appending tokens at a steady rate.

    python bench/redis_eventlog_load.py --url redis://127.0.0.1:6379/0 \
        [--replies 1000] [--rate 30] [--seconds 10] [--readers 0] \
        [--reader frames|follow] [--default-gc]

One RedisEventLog "process" owns every reply; with ``--readers N`` a second OS process follows
N of them through its tailer (one reader each) and reports its CPU and the append-to-read
latency. Prints numbers only, one ``name value`` per line. The Redis counters are server-wide:
other clients of the same server add to them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid

from redis.asyncio import Redis

from alice.api.sse import FeedResponse
from alice.main import settle_garbage_collector
from alice.services.eventlog import Entry
from alice.services.eventlog.redis import RedisEventLog
from alice.services.replies import ReplyFeed


def settings(tag: str) -> dict[str, object]:
    return {
        "retention_seconds": 30.0,
        "max_events": 1040,
        "ttl_seconds": 120.0,
        "key_prefix": f"alicebench:{tag}:gen:",
    }


async def info(raw: Redis) -> dict[str, float]:
    mem = await raw.info("memory")
    stats = await raw.info("stats")
    cpu = await raw.info("cpu")
    commands = await raw.info("commandstats")
    calls = {k: float(v["calls"]) for k, v in commands.items() if isinstance(v, dict)}
    return {
        "evalsha": calls.get("cmdstat_evalsha", 0.0),
        "xread": calls.get("cmdstat_xread", 0.0),
        "used_cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        "used_memory": float(mem["used_memory"]),
        "total_commands_processed": float(stats["total_commands_processed"]),
        "instantaneous_ops_per_sec": float(stats["instantaneous_ops_per_sec"]),
    }


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def settle_gc(default_gc: bool) -> None:
    """The garbage collector as `alice serve` settles it once started (`alice.main`), unless
    `--default-gc` keeps Python's: with the defaults the reading process spent ~1.5 s of every
    10 in collections here (young ones every 700 allocations while an XREAD's reply is built,
    full ones up to 40 ms), which no ALICE process pays."""
    if not default_gc:
        settle_garbage_collector()


async def reader_process(url: str, tag: str, count: int, default_gc: bool, how: str) -> None:
    """Child: read ``count`` replies from another process, report CPU and latency. Each
    reader is ALICE's SSE response over the reply's feed (``frames``: `alice.api.sse`, every
    frame waiting sent as one bytes), or reads entry by entry (``follow``)."""
    raw = Redis.from_url(url, decode_responses=True)
    gens = [uuid.UUID(g) for g in await raw.lrange(f"alicebench:{tag}:gens", 0, count - 1)]
    await raw.aclose()
    log = RedisEventLog(
        url,
        client_name=f"alicebench-{tag}-b",
        tailer_client_name=f"alicebench-{tag}-b-tailer",
        **settings(tag),  # type: ignore[arg-type]
    )
    await log.start()
    settle_gc(default_gc)
    latencies: list[float] = []

    async def follow(gen: uuid.UUID) -> int:
        n = 0
        async for entry in log.follow(gen, 0):
            n += 1
            if entry.event == "token":
                latencies.append(time.time() - json.loads(entry.data)["t"])
        return n

    async def frames(gen: uuid.UUID) -> int:
        # ALICE's own SSE response over the reply's feed, with the socket left out: `send`
        # gets what would be written, and the client never leaves.
        n = 0

        async def send(message: dict[str, object]) -> None:
            nonlocal n
            chunk = message.get("body")
            if not isinstance(chunk, bytes) or not chunk:
                return
            now = time.time()
            for frame in chunk.split(b"\n\n")[:-1]:
                if frame.startswith(b":"):
                    continue  # a keep-alive comment
                n += 1
                if b"\nevent: token\n" in frame:
                    latencies.append(now - json.loads(frame.partition(b"\ndata: ")[2])["t"])

        never: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

        async def receive() -> dict[str, object]:
            return await never

        feed = ReplyFeed(log.frames(gen, 0), ping_seconds=15.0)
        await FeedResponse(feed)({"type": "http", "method": "GET"}, receive, send)  # type: ignore[arg-type]
        return n

    read = frames if how == "frames" else follow
    tasks = [asyncio.create_task(read(g)) for g in gens]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    cpu0, t0 = time.process_time(), time.monotonic()
    counts = await asyncio.gather(*tasks)
    cpu, elapsed = time.process_time() - cpu0, time.monotonic() - t0
    await log.close()
    print(f"reader_replies_followed {len(gens)}")
    print(f"reader_entries_read {sum(counts)}")
    print(f"reader_process_cpu_share {cpu / elapsed:.2f}")
    print(f"reader_latency_p50_ms {percentile(latencies, 0.5) * 1000:.1f}")
    print(f"reader_latency_p99_ms {percentile(latencies, 0.99) * 1000:.1f}")
    print(f"reader_latency_max_ms {max(latencies, default=0) * 1000:.1f}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("ALICE_TEST_REDIS_URL"))
    parser.add_argument("--replies", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=30.0, help="tokens per second per reply")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--readers", type=int, default=0, help="replies followed remotely")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="Python's default garbage collector, not the one `alice serve` settles",
    )
    parser.add_argument(
        "--reader",
        choices=("frames", "follow"),
        default="frames",
        help="how each remote reader reads: as an SSE response (frames), or entry by entry",
    )
    parser.add_argument("--reader-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.url:
        raise SystemExit("--url or ALICE_TEST_REDIS_URL required")
    if args.reader_of:
        await reader_process(args.url, args.reader_of, args.readers, args.default_gc, args.reader)
        return

    tag = uuid.uuid4().hex[:8]
    owner = RedisEventLog(args.url, client_name=f"alicebench-{tag}-a", **settings(tag))  # type: ignore[arg-type]
    raw = Redis.from_url(args.url, decode_responses=True)
    await owner.start()
    settle_gc(args.default_gc)
    child = None
    try:
        gens = [uuid.uuid4() for _ in range(args.replies)]
        for gen in gens:
            await owner.create(gen, {"conversation_id": str(uuid.uuid4()), "user_id": "bench"})
            owner.append(gen, Entry(1, "conversation", json.dumps({"conversation_id": "x"})))
        await owner.flush(30)
        if args.readers:
            await raw.rpush(f"alicebench:{tag}:gens", *[str(g) for g in gens[: args.readers]])
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                os.path.abspath(__file__),
                "--url",
                args.url,
                "--readers",
                str(args.readers),
                "--reader-of",
                tag,
                "--reader",
                args.reader,
                *(["--default-gc"] if args.default_gc else []),
                stdout=asyncio.subprocess.PIPE,
            )
            assert child.stdout is not None
            await asyncio.wait_for(child.stdout.readline(), 60)  # "ready"

        before = await info(raw)
        cpu0 = time.process_time()
        t0 = time.monotonic()
        sent = [0] * len(gens)
        ops_samples: list[float] = []
        next_sample = t0 + 1.0
        while (now := time.monotonic()) - t0 < args.seconds:
            due = int((now - t0) * args.rate)
            wall = time.time()
            for i, gen in enumerate(gens):
                while sent[i] < due:
                    index = sent[i]
                    data = json.dumps({"content": f"tok{index} ", "index": index, "t": wall})
                    owner.append(gen, Entry(index + 2, "token", data))
                    sent[i] += 1
            if now >= next_sample:
                next_sample += 1.0
                ops_samples.append((await info(raw))["instantaneous_ops_per_sec"])
            await asyncio.sleep(0.01)
        queued_at_end = owner.writer.queued
        flushed = await owner.flush(30)
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        after = await info(raw)

        total_tokens = sum(sent)

        async def end(i: int, gen: uuid.UUID) -> None:
            data = json.dumps({"status": "complete", "last_index": sent[i] - 1})
            await owner.finish(gen, Entry(sent[i] + 2, "done", data))

        await asyncio.gather(*(end(i, g) for i, g in enumerate(gens)))

        mem_delta = after["used_memory"] - before["used_memory"]
        cmds = after["total_commands_processed"] - before["total_commands_processed"]
        print(f"replies {args.replies}")
        print(f"tokens_per_second_per_reply {args.rate}")
        print(f"seconds {elapsed:.2f}")
        print(f"tokens_appended {total_tokens}")
        print(f"appends_per_second {total_tokens / elapsed:.0f}")
        print(f"queue_at_end {queued_at_end}")
        print(f"flushed {int(flushed)}")
        print(f"redis_used_memory_delta_bytes {mem_delta:.0f}")
        print(f"redis_bytes_per_entry {mem_delta / max(total_tokens, 1):.1f}")
        print(f"redis_bytes_per_reply {mem_delta / max(args.replies, 1):.0f}")
        print(f"redis_commands_per_second {cmds / elapsed:.0f}")
        print(f"redis_commands_per_entry {cmds / max(total_tokens, 1):.3f}")
        print(f"redis_evalsha_per_second {(after['evalsha'] - before['evalsha']) / elapsed:.0f}")
        print(f"redis_xread_per_second {(after['xread'] - before['xread']) / elapsed:.0f}")
        if ops_samples:
            print(f"redis_instantaneous_ops_per_sec_max {max(ops_samples):.0f}")
            mean = sum(ops_samples) / len(ops_samples)
            print(f"redis_instantaneous_ops_per_sec_mean {mean:.0f}")
        print(f"redis_cpu_share {(after['used_cpu'] - before['used_cpu']) / elapsed:.2f}")
        print(f"owner_process_cpu_seconds {cpu:.2f}")
        print(f"owner_process_cpu_share {cpu / elapsed:.2f}")
        if child is not None and child.stdout is not None:
            out, _ = await asyncio.wait_for(child.communicate(), 120)
            sys.stdout.write(out.decode())
            child = None
    finally:
        if child is not None:
            child.kill()
            await child.wait()
        await owner.close()
        keys = [k async for k in raw.scan_iter(match=f"alicebench:{tag}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await raw.delete(*keys[i : i + 500])
        await raw.aclose()


if __name__ == "__main__":
    # The event loop of `alice serve` (uvicorn's, uvloop where it is installed, as it is
    # here): the owner and the reader process are measured on the loop they run on.
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
