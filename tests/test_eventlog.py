"""The per-reply event log (alice.services.eventlog): memory and Redis implementations."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from alice.services.eventlog import Entry, EventLog, LogState, LogUnavailableError, MemoryEventLog

REDIS_URL = os.environ.get("ALICE_TEST_REDIS_URL")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="ALICE_TEST_REDIS_URL not set")

RETENTION = 0.2
MAX_EVENTS = 1040
TTL = 30.0


def conversation(seq: int = 1) -> Entry:
    return Entry(seq, "conversation", json.dumps({"conversation_id": "c", "is_new": True}))


def token(index: int) -> Entry:
    return Entry(index + 2, "token", json.dumps({"content": f"w{index} ", "index": index}))


def done(seq: int, status: str = "complete") -> Entry:
    return Entry(seq, "done", json.dumps({"status": status, "last_index": seq - 3}))


def meta() -> dict[str, str]:
    return {"conversation_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())}


async def collect(it: AsyncIterator[Entry], timeout: float = 5.0) -> list[Entry]:
    async def run() -> list[Entry]:
        return [e async for e in it]

    return await asyncio.wait_for(run(), timeout)


async def take(it: AsyncIterator[Entry], n: int, timeout: float = 5.0) -> list[Entry]:
    out: list[Entry] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await anext(it))
    return out


async def eventually(check: Callable[[], object], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)


# -- fixtures ------------------------------------------------------------------------------------


class RedisEnv:
    """Unique key prefix per test; builds RedisEventLog "processes" and cleans their keys."""

    def __init__(self) -> None:
        from redis.asyncio import Redis

        self.tag = uuid.uuid4().hex[:12]
        self.prefix = f"alicetest:{self.tag}:gen:"
        self.raw = Redis.from_url(REDIS_URL, decode_responses=True)
        self.logs: list[EventLog] = []

    def key(self, gen_id: uuid.UUID, part: str) -> str:
        return f"{self.prefix}{{{gen_id}}}:{part}"

    async def make(self, name: str = "a", url: str | None = None, **kwargs: object):
        from alice.services.eventlog.redis import RedisEventLog

        params: dict[str, object] = {
            "retention_seconds": RETENTION,
            "max_events": MAX_EVENTS,
            "ttl_seconds": TTL,
            "key_prefix": self.prefix,
            "client_name": f"alicetest-{self.tag}-{name}",
            "tailer_client_name": f"alicetest-{self.tag}-{name}-tailer",
            "owner_id": f"test-{name}",
        }
        params.update(kwargs)
        log = RedisEventLog(url or REDIS_URL, **params)  # type: ignore[arg-type]
        await log.start()
        self.logs.append(log)
        return log

    async def close(self) -> None:
        for log in self.logs:
            await log.close()
        keys = [k async for k in self.raw.scan_iter(match=f"alicetest:{self.tag}:*", count=500)]
        if keys:
            await self.raw.delete(*keys)
        await self.raw.aclose()


@pytest.fixture
async def redis_env() -> AsyncIterator[RedisEnv]:
    if not REDIS_URL:
        pytest.skip("ALICE_TEST_REDIS_URL not set")
    env = RedisEnv()
    try:
        yield env
    finally:
        await env.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
async def log(request: pytest.FixtureRequest) -> AsyncIterator[EventLog]:
    if request.param == "memory":
        mem = MemoryEventLog(retention_seconds=RETENTION, max_events=MAX_EVENTS, ttl_seconds=TTL)
        await mem.start()
        yield mem
        await mem.close()
        return
    env = RedisEnv()
    try:
        yield await env.make("solo")
    finally:
        await env.close()


async def started(log: EventLog, tokens: int) -> tuple[uuid.UUID, list[Entry]]:
    gen = uuid.uuid4()
    await log.create(gen, meta())
    entries = [conversation()] + [token(i) for i in range(tokens)]
    for entry in entries:
        log.append(gen, entry)
    return gen, entries


# -- both implementations ---------------------------------------------------------------------


async def test_follow_from_zero_gets_everything_live_then_ends(log: EventLog) -> None:
    gen, entries = await started(log, 3)
    reader = asyncio.create_task(collect(log.follow(gen, 0)))
    for i in range(3, 40):
        entry = token(i)
        entries.append(entry)
        log.append(gen, entry)
        if i % 7 == 0:
            await asyncio.sleep(0.005)
    terminal = done(len(entries) + 1)
    await log.finish(gen, terminal)
    entries.append(terminal)
    got = await reader
    assert got == entries
    assert [e.seq for e in got] == list(range(1, len(entries) + 1))
    # A reader arriving after the end replays it all and ends.
    assert await collect(log.follow(gen, 0)) == entries


async def test_follow_from_k_gets_exactly_the_rest(log: EventLog) -> None:
    gen, entries = await started(log, 10)
    terminal = done(len(entries) + 1)
    await log.finish(gen, terminal)
    entries.append(terminal)
    for k in (0, 1, 5, 11):
        got = await collect(log.follow(gen, k))
        assert [e.seq for e in got] == list(range(k + 1, len(entries) + 1))
        assert got == entries[k:]
    assert await collect(log.follow(gen, len(entries))) == []


async def test_live_follow_from_k_while_running(log: EventLog) -> None:
    gen, entries = await started(log, 5)
    it = log.follow(gen, 4)
    first = await take(it, 2)
    assert first == entries[4:6]
    log.append(gen, token(5))
    assert await take(it, 1) == [token(5)]
    await log.finish(gen, done(8))
    assert await collect(it) == [done(8)]


async def test_a_cancelled_wait_loses_nothing(log: EventLog) -> None:
    """The SSE layer may wrap each wait in a timeout (keep-alive pings)."""
    gen, entries = await started(log, 1)
    it = log.follow(gen, 0)
    assert await take(it, 2) == entries
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(it), 0.05)
    log.append(gen, token(1))
    await log.finish(gen, done(4))
    assert await collect(it) == [token(1), done(4)]


async def test_state(log: EventLog) -> None:
    assert await log.state(uuid.uuid4()) is None
    gen, entries = await started(log, 4)
    assert await log.state(gen) == LogState(5, False)
    await log.finish(gen, done(6))
    assert await log.state(gen) == LogState(6, True)


async def test_unknown_log_raises_key_error(log: EventLog) -> None:
    with pytest.raises(KeyError):
        await collect(log.follow(uuid.uuid4(), 0))


async def test_append_rules(log: EventLog) -> None:
    gen, entries = await started(log, 2)
    with pytest.raises(ValueError):
        log.append(gen, token(5))  # gap
    with pytest.raises(ValueError):
        log.append(gen, token(1))  # duplicate
    with pytest.raises(ValueError):
        log.append(gen, done(4))  # terminal must go through finish
    with pytest.raises(KeyError):
        log.append(uuid.uuid4(), conversation())
    with pytest.raises(ValueError):
        await log.create(gen, meta())
    await log.finish(gen, done(4))
    with pytest.raises(ValueError):
        log.append(gen, token(3))


async def test_capacity_is_a_safety_net(log: EventLog) -> None:
    gen, entries = await started(log, MAX_EVENTS - 1)
    with pytest.raises(ValueError):
        log.append(gen, token(MAX_EVENTS - 1))
    await log.finish(gen, done(MAX_EVENTS + 1))  # the terminal entry always fits
    got = await collect(log.follow(gen, MAX_EVENTS - 2))
    assert [e.seq for e in got] == [MAX_EVENTS - 1, MAX_EVENTS, MAX_EVENTS + 1]


async def test_retention_drops_the_log(log: EventLog) -> None:
    gen, entries = await started(log, 2)
    await log.finish(gen, done(4))
    assert await log.state(gen) == LogState(4, True)
    await eventually(lambda: _is_none(log.state(gen)), timeout=3.0)
    with pytest.raises(KeyError):
        await collect(log.follow(gen, 0))


async def _is_none(coro: object) -> bool:
    return await coro is None  # type: ignore[misc]


async def test_reader_keeps_its_entries_past_retention(log: EventLog) -> None:
    gen, entries = await started(log, 2)
    it = log.follow(gen, 0)
    assert await take(it, 1) == entries[:1]
    await log.finish(gen, done(4))
    await asyncio.sleep(RETENTION + 0.2)
    assert await collect(it) == entries[1:] + [done(4)]


async def test_stop_request_reaches_local_handler(log: EventLog) -> None:
    calls: list[tuple[uuid.UUID, int | None]] = []
    log.set_stop_handler(lambda g, i: calls.append((g, i)))
    gen, _ = await started(log, 3)
    await log.request_stop(gen, 2)
    assert calls == [(gen, 2)]
    await log.finish(gen, done(5, "stopped"))
    await log.request_stop(gen, None)  # finished: nothing to stop
    assert calls == [(gen, 2)]


async def test_mark_lost_only_as_next_seq(log: EventLog) -> None:
    gen, entries = await started(log, 3)
    lost = Entry(6, "error", json.dumps({"code": "GENERATION_LOST", "detail": "lost"}))
    assert not await log.mark_lost(gen, lost)  # seq 6 is not next (5 is)
    lost = Entry(5, "error", lost.data)
    assert await log.mark_lost(gen, lost)
    assert not await log.mark_lost(gen, lost)
    assert await collect(log.follow(gen, 3)) == entries[3:] + [lost]
    assert not await log.mark_lost(uuid.uuid4(), lost)


def sse(gen: uuid.UUID, entries: list[Entry]) -> bytes:
    return b"".join(
        f"id: {gen}:{e.seq}\nevent: {e.event}\ndata: {e.data}\n\n".encode() for e in entries
    )


async def read_frames(reader, timeout: float = 5.0) -> bytes:  # type: ignore[no-untyped-def]
    """Every frame to the terminal one, waiting on `changed` between takes."""
    out = b""
    async with asyncio.timeout(timeout):
        while not reader.ended:
            chunk, _ = reader.take()
            out += chunk
            if not chunk and not reader.ended:
                await asyncio.wait([reader.changed()])
    await reader.aclose()
    return out


async def test_frames_are_encoded_once_and_a_reader_behind_takes_all_waiting_at_once(
    log: EventLog,
) -> None:
    gen, entries = await started(log, 3)
    reader = log.frames(gen, 1)
    chunk, tokens = reader.take()
    assert chunk == sse(gen, entries[1:]) and tokens == 3  # three events, one write
    assert reader.take() == (b"", 0)
    changed = reader.changed()
    assert not changed.done()
    log.append(gen, token(3))
    assert changed.done()
    assert reader.take() == (sse(gen, [token(3)]), 1)
    assert not reader.ended
    await log.finish(gen, done(6))
    assert reader.take() == (sse(gen, [done(6)]), 0)
    assert reader.ended
    # The frames are the bytes every reader gets: a second reader from 0 gets them all.
    assert await read_frames(log.frames(gen, 0)) == sse(gen, [*entries, token(3), done(6)])
    with pytest.raises(KeyError):
        await read_frames(log.frames(uuid.uuid4(), 0))


# -- memory internals: a mirror fed out of order never skips a gap ------------------------


async def test_mirror_waits_at_a_gap_then_resumes() -> None:
    from alice.services.eventlog.memory import GenLog

    mirror = GenLog(100, uuid.uuid4())
    all_entries = [conversation()] + [token(i) for i in range(5)] + [done(7)]
    assert mirror.offer([all_entries[0], all_entries[1], all_entries[3]]) == 4
    it = mirror.follower(0)
    assert await take(it, 2) == all_entries[:2]
    with pytest.raises(TimeoutError):
        await take(it, 1, timeout=0.2)
    mirror.offer(all_entries[1:])  # the gap is filled, duplicates ignored
    assert await collect(it) == all_entries[2:]


# -- Redis: two processes sharing one Redis -------------------------------------------------


@needs_redis
async def test_follow_through_another_process(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a")
    b = await redis_env.make("b")
    gen, entries = await started(a, 5)
    assert await a.flush(2)
    assert await b.state(gen) == LogState(6, False)
    from_zero = asyncio.create_task(collect(b.follow(gen, 0)))
    from_three = asyncio.create_task(collect(b.follow(gen, 3)))
    await asyncio.sleep(0.05)
    for i in range(5, 120):
        entries.append(token(i))
        a.append(gen, entries[-1])
        if i % 10 == 0:
            await asyncio.sleep(0.01)
    entries.append(done(len(entries) + 1))
    await a.finish(gen, entries[-1])
    assert await from_zero == entries
    assert await from_three == entries[3:]
    assert await b.state(gen) == LogState(len(entries), True)
    # finish() returned only once everything was in Redis.
    raw = await redis_env.raw.xrange(redis_env.key(gen, "events"))
    assert [int(i.split("-")[1]) for i, _ in raw] == list(range(1, len(entries) + 1))
    assert (await redis_env.raw.hgetall(redis_env.key(gen, "meta")))["status"] == "finished"


@needs_redis
async def test_ping_says_whether_redis_answers(redis_env: RedisEnv) -> None:
    """/ready reads this (the memory log has nothing to ask, and is always ready)."""
    up = await redis_env.make("up")
    down = await redis_env.make("down", url="redis://127.0.0.1:1/0", connect_timeout=0.2)
    assert await up.ping() is True
    assert await down.ping() is False


@needs_redis
async def test_frames_through_another_process(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a")
    b = await redis_env.make("b")
    gen, entries = await started(a, 3)
    assert await a.flush(2)
    reading = asyncio.create_task(read_frames(b.frames(gen, 2)))
    for i in range(3, 30):
        entries.append(token(i))
        a.append(gen, entries[-1])
        await asyncio.sleep(0.002)
    entries.append(done(len(entries) + 1))
    await a.finish(gen, entries[-1])
    assert await reading == sse(gen, entries[2:])
    assert not len(b.mirrors)  # released when the reader closed
    with pytest.raises(KeyError):
        await read_frames(b.frames(uuid.uuid4(), 0))


@needs_redis
async def test_unknown_remote_log(redis_env: RedisEnv) -> None:
    b = await redis_env.make("b")
    assert await b.state(uuid.uuid4()) is None
    with pytest.raises(KeyError):
        await collect(b.follow(uuid.uuid4(), 0))


@needs_redis
async def test_remote_reader_waits_before_a_deleted_entry(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a")
    b = await redis_env.make("b")
    gen, entries = await started(a, 4)
    assert await a.flush(2)
    assert await redis_env.raw.xdel(redis_env.key(gen, "events"), "0-3") == 1
    it = b.follow(gen, 0)
    assert await take(it, 2) == entries[:2]
    a.append(gen, token(4))
    await a.finish(gen, done(7))
    with pytest.raises(TimeoutError):
        await take(it, 1, timeout=0.6)
    await it.aclose()


@needs_redis
async def test_remote_reader_waits_for_a_late_entry(redis_env: RedisEnv) -> None:
    """Entries written directly, one missing for a while: the reader stops before it."""
    b = await redis_env.make("b")
    gen = uuid.uuid4()
    raw = redis_env.raw
    events = redis_env.key(gen, "events")
    await raw.hset(redis_env.key(gen, "meta"), mapping={"status": "running", "owner": "x"})
    for entry in (conversation(), token(0)):
        await raw.xadd(events, {"e": entry.event, "d": entry.data}, id=f"0-{entry.seq}")
    it = b.follow(gen, 0)
    assert await take(it, 2) == [conversation(), token(0)]
    with pytest.raises(TimeoutError):
        await take(it, 1, timeout=0.4)
    for entry in (token(1), token(2), done(5)):
        await raw.xadd(events, {"e": entry.event, "d": entry.data}, id=f"0-{entry.seq}")
    assert await collect(it) == [token(1), token(2), done(5)]
    # Out of order is refused by Redis itself, so a gap can only come from a deletion.
    from redis.exceptions import ResponseError

    with pytest.raises(ResponseError):
        await raw.xadd(events, {"e": "token", "d": "{}"}, id="0-4")


@needs_redis
async def test_second_writer_is_refused(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a")
    c = await redis_env.make("c")
    gen, entries = await started(a, 3)
    assert await a.flush(2)
    from redis.exceptions import ResponseError

    events = redis_env.key(gen, "events")
    with pytest.raises(ResponseError):
        await redis_env.raw.xadd(events, {"e": "token", "d": "{}"}, id="0-2")
    # A second "owner" of the same generation: its XADDs are refused, it logs and goes on.
    await c.create(gen, meta())
    c.append(gen, Entry(1, "conversation", '{"intruder": true}'))
    c.append(gen, Entry(2, "token", '{"intruder": true}'))
    assert await c.flush(2)
    await c.finish(gen, done(3))
    stored = await redis_env.raw.xrange(events)
    assert [f["d"] for _, f in stored] == [e.data for e in entries]
    # The rightful owner goes on unharmed.
    a.append(gen, token(3))
    await a.finish(gen, done(6))
    stored = await redis_env.raw.xrange(events)
    assert [int(i.split("-")[1]) for i, _ in stored] == [1, 2, 3, 4, 5, 6]


@needs_redis
async def test_mark_lost_from_another_process_fences_the_owner(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a")
    b = await redis_env.make("b")
    gen, entries = await started(a, 3)
    assert await a.flush(2)
    reader = asyncio.create_task(collect(b.follow(gen, 0)))
    state = await b.state(gen)
    assert state == LogState(4, False)
    lost = Entry(5, "error", json.dumps({"code": "GENERATION_LOST", "detail": "lost"}))
    assert not await b.mark_lost(gen, Entry(4, "error", lost.data))  # seq taken
    assert await b.mark_lost(gen, lost)
    assert not await b.mark_lost(gen, Entry(6, "error", lost.data))  # already finished
    assert await reader == entries + [lost]
    assert await b.state(gen) == LogState(5, True)
    # The zombie owner writes on: Redis refuses its seq 5, so nothing more of it is written,
    # and its own end does not overwrite the reaper's.
    a.append(gen, token(3))
    a.append(gen, token(4))
    await a.finish(gen, done(7))
    stored = await redis_env.raw.xrange(redis_env.key(gen, "events"))
    assert [int(i.split("-")[1]) for i, _ in stored] == [1, 2, 3, 4, 5]
    assert stored[-1][1] == {"e": "error", "d": lost.data}
    assert a.fenced(gen)
    assert await b.state(gen) == LogState(5, True)
    assert await collect(b.follow(gen, 0)) == entries + [lost]
    meta = await redis_env.raw.hgetall(redis_env.key(gen, "meta"))
    assert meta["status"] == "finished" and meta["last_seq"] == "5"
    ttl = await redis_env.raw.pttl(redis_env.key(gen, "events"))
    assert 0 < ttl <= RETENTION * 1000


@needs_redis
async def test_stop_on_b_reaches_owner_a(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a")
    b = await redis_env.make("b", stop_poll_interval=30.0)  # only pub/sub can deliver here
    arrived = asyncio.Event()
    calls: list[tuple[uuid.UUID, int | None]] = []

    def handler(gen_id: uuid.UUID, last_index: int | None) -> None:
        calls.append((gen_id, last_index))
        arrived.set()

    a.set_stop_handler(handler)
    b.set_stop_handler(lambda g, i: pytest.fail("b does not own it"))
    await eventually(lambda: a.control_ok and b.control_ok)
    gen, _ = await started(a, 3)
    await b.request_stop(gen, 2)
    await asyncio.wait_for(arrived.wait(), 2.0)
    assert calls == [(gen, 2)]
    await asyncio.sleep(0.1)
    assert calls == [(gen, 2)]  # delivered once


@needs_redis
async def test_stop_on_b_reaches_owner_a_pubsub_lost_mocked(
    redis_env: RedisEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await redis_env.make("a", stop_poll_interval=0.5)
    b = await redis_env.make("b")
    arrived = asyncio.Event()
    calls: list[tuple[uuid.UUID, int | None]] = []

    def handler(gen_id: uuid.UUID, last_index: int | None) -> None:
        calls.append((gen_id, last_index))
        arrived.set()

    a.set_stop_handler(handler)
    published: list[tuple[str, str]] = []

    async def lost_publish(channel: str, message: str) -> int:
        published.append((channel, message))
        return 0

    monkeypatch.setattr(b.redis, "publish", lost_publish)
    gen, _ = await started(a, 3)
    await b.request_stop(gen, None)
    assert published and json.loads(published[0][1])["stop"] == str(gen)
    await asyncio.wait_for(arrived.wait(), 2.0)
    assert calls == [(gen, None)]
    await asyncio.sleep(0.7)  # one more poll round: not delivered twice
    assert calls == [(gen, None)]


@needs_redis
async def test_stop_survives_a_killed_subscriber_connection(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a", stop_poll_interval=30.0)
    b = await redis_env.make("b")
    arrived = asyncio.Event()
    a.set_stop_handler(lambda g, i: arrived.set())
    await eventually(lambda: a.control_ok)
    clients = await redis_env.raw.client_list()
    for client in clients:
        if client.get("name") == f"alicetest-{redis_env.tag}-a" and "P" in client.get("flags", ""):
            await redis_env.raw.client_kill_filter(_id=client["id"])
    await eventually(lambda: not a.control_ok, timeout=3.0)
    await eventually(lambda: a.control_ok, timeout=3.0)
    gen, _ = await started(a, 1)
    await b.request_stop(gen, 0)
    await asyncio.wait_for(arrived.wait(), 2.0)


@needs_redis
async def test_retention_drops_remote_log_and_keys(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a")
    b = await redis_env.make("b")
    gen, entries = await started(a, 2)
    await a.finish(gen, done(4))
    assert await collect(b.follow(gen, 0)) == entries + [done(4)]
    for part in ("events", "meta"):
        ttl = await redis_env.raw.pttl(redis_env.key(gen, part))
        assert 0 < ttl <= RETENTION * 1000
    await eventually(lambda: _is_none(b.state(gen)))
    await eventually(lambda: _is_none(a.state(gen)))
    assert not len(b.mirrors) and not a.writer.owned
    with pytest.raises(KeyError):
        await collect(b.follow(gen, 0))


@needs_redis
async def test_running_keys_expire(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a")
    gen, _ = await started(a, 1)
    assert await a.flush(2)
    for part in ("events", "meta"):
        ttl = await redis_env.raw.pttl(redis_env.key(gen, part))
        assert TTL * 1000 - 5000 < ttl <= TTL * 1000


@needs_redis
async def test_many_followers_share_one_reading_connection(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a")
    b = await redis_env.make("b")
    gen, entries = await started(a, 2)
    assert await a.flush(2)
    readers = [asyncio.create_task(collect(b.follow(gen, i % 3), 10.0)) for i in range(200)]
    await asyncio.sleep(0.3)
    for i in range(2, 30):
        entries.append(token(i))
        a.append(gen, entries[-1])
        await asyncio.sleep(0.002)
    tailer_name = f"alicetest-{redis_env.tag}-b-tailer"
    names = [c.get("name") for c in await redis_env.raw.client_list()]
    assert names.count(tailer_name) == 1
    b_pool = names.count(f"alicetest-{redis_env.tag}-b")
    assert b_pool <= 3  # pub/sub + a command connection or two, not one per reader
    entries.append(done(len(entries) + 1))
    await a.finish(gen, entries[-1])
    results = await asyncio.gather(*readers)
    for i, got in enumerate(results):
        assert got == entries[i % 3 :]
    assert not len(b.mirrors)  # dropped once the last reader left


@needs_redis
async def test_redis_down_owner_goes_on_locally(redis_env: RedisEnv) -> None:
    down = await redis_env.make(
        "down",
        url="redis://127.0.0.1:1/0",
        finish_timeout=0.3,
        connect_timeout=0.2,
        retention_seconds=5.0,
    )
    assert not await down.ping()
    gen, entries = await started(down, 3)  # create does not raise
    reader = asyncio.create_task(collect(down.follow(gen, 0)))
    await down.finish(gen, done(5))  # best effort: returns, no raise
    assert await reader == entries + [done(5)]
    assert await down.state(gen) == LogState(5, True)
    with pytest.raises(LogUnavailableError):
        await down.state(uuid.uuid4())
    with pytest.raises(LogUnavailableError):
        await collect(down.follow(uuid.uuid4(), 0))
    with pytest.raises(LogUnavailableError):
        await down.request_stop(uuid.uuid4(), None)


@needs_redis
async def test_create_retried_when_redis_was_unreachable(
    redis_env: RedisEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    a = await redis_env.make("a")
    b = await redis_env.make("b")

    def down_pipeline(*args: object, **kwargs: object) -> None:
        raise RedisConnectionError("down for this test")

    with monkeypatch.context() as patch:
        patch.setattr(a.redis, "pipeline", down_pipeline)
        gen, entries = await started(a, 2)  # the meta write fails and is queued
    await a.finish(gen, done(4))
    meta = await redis_env.raw.hgetall(redis_env.key(gen, "meta"))
    assert meta["status"] == "finished" and meta["owner"] == "test-a"
    assert await collect(b.follow(gen, 0)) == entries + [done(4)]


@needs_redis
async def test_a_batch_whose_reply_was_lost_is_resent_harmlessly(
    redis_env: RedisEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    a = await redis_env.make("a")
    b = await redis_env.make("b")
    real_send = a.writer.send_batch
    lost = []

    async def send_then_lose_reply(keys: list[str], args: list[object]) -> object:
        result = await real_send(keys, args)
        if not lost:
            lost.append(args)
            raise RedisConnectionError("reply lost")
        return result

    monkeypatch.setattr(a.writer, "send_batch", send_then_lose_reply)
    gen, entries = await started(a, 3)
    assert await a.flush(3)
    assert lost  # the first batch was written, then sent again
    assert not a.fenced(gen)  # its refusals were recognised as its own earlier write
    a.append(gen, token(3))
    await a.finish(gen, done(6))
    assert await collect(b.follow(gen, 0)) == entries + [token(3), done(6)]


@needs_redis
async def test_close_ends_remote_readers(redis_env: RedisEnv) -> None:
    a = await redis_env.make("a")
    b = await redis_env.make("b")
    gen, entries = await started(a, 2)
    it = b.follow(gen, 0)
    assert await take(it, 3) == entries
    waiting = asyncio.create_task(anext(it))
    await asyncio.sleep(0.05)
    await b.close()
    with pytest.raises(KeyError):
        await asyncio.wait_for(waiting, 2.0)


def test_entries_read_as_redis_sent_them_are_the_entries_redis_py_would_give() -> None:
    """The tailer's undictified reply (`[id, [field, value, ...]]`) gives the same entries as
    redis-py's parsed one: fields in the writers' order or any other, ids not of this log's
    form (`0-<seq>`) skipped, an entry without fields read as empty."""
    from alice.services.eventlog.redis.mirror import parse_entries

    raw = [
        ["0-3", ["e", "token", "d", '{"content": "a"}']],
        ["0-4", ["d", '{"content": "b"}', "e", "token"]],
        ["1700000000000-0", ["e", "token", "d", "{}"]],
        ["0-x", ["e", "token", "d", "{}"]],
        ["0-5", ["e", "done", "d", "{}", "extra", "1"]],
        ["0-6", None],
    ]
    parsed = [
        (entry_id, dict(zip(f[::2], f[1::2], strict=True)) if f else None) for entry_id, f in raw
    ]
    expected = [
        Entry(3, "token", '{"content": "a"}'),
        Entry(4, "token", '{"content": "b"}'),
        Entry(5, "done", "{}"),
        Entry(6, "", ""),
    ]
    assert parse_entries(raw) == expected
    assert parse_entries(parsed) == expected


def test_the_tailer_s_hand_packed_xread_is_the_command_redis_py_packs() -> None:
    """`resp.xread` (the tailer's XREAD, packed by hand) sends byte for byte what redis-py
    packs for the same command, non-ASCII keys and ids included."""
    from redis.asyncio.connection import Connection

    from alice.services.eventlog.redis.resp import bulk, xread

    keys = ["p:{a}:events", "p:{b}:events", "p:{ü}:events"]
    ids = ["0-0", "0-17", "0-123456"]
    packed = xread(512, 250, [bulk(k.encode()) for k in keys], [bulk(i.encode()) for i in ids])
    reference = Connection().pack_command(
        "XREAD", "COUNT", 512, "BLOCK", 250, "STREAMS", *keys, *ids
    )
    assert packed == b"".join(reference)


@needs_redis
async def test_a_packed_command_cancelled_mid_reply_never_hands_its_connection_on(
    redis_env: RedisEnv,
) -> None:
    """A command sent packed (`resp.send_packed`, as the tailer's blocking XREAD) and cancelled
    while Redis still owes its reply: the connection is closed (redis-py's `read_response`
    does it; the tailer relies on it), so the next command on the same one-connection client
    reads its own reply, not the late one of the cancelled command."""
    from redis.asyncio import Redis

    from alice.services.eventlog.redis.resp import bulk, send_packed

    client = Redis.from_url(REDIS_URL, decode_responses=True, max_connections=1)
    key = f"alicetest:{redis_env.tag}:list"
    blpop = b"*3\r\n" + bulk(b"BLPOP") + bulk(key.encode()) + bulk(b"5")
    try:
        waiting = asyncio.create_task(send_packed(client, blpop))
        await asyncio.sleep(0.1)  # Redis now blocks on the list for this connection
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await redis_env.raw.rpush(key, "late")
        ping = b"*1\r\n" + bulk(b"PING")
        assert await asyncio.wait_for(send_packed(client, ping), 2) == "PONG"
        # The cancelled BLPOP took nothing: its connection was gone before the push.
        assert await redis_env.raw.lrange(key, 0, -1) == ["late"]
    finally:
        await client.aclose()
