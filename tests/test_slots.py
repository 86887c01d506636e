"""The counted slots of alice.services.slots: in process, and in Redis across processes, where a
process that dies without giving its slots back loses them when their leases expire."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from alice.services.slots import MemorySlots, RedisSlots, Slots, SlotsUnavailableError
from tests.conftest import REDIS_URL

needs_redis = pytest.mark.skipif(not REDIS_URL, reason="needs ALICE_TEST_REDIS_URL")


@pytest.fixture(params=["memory", "redis"])
async def slots(request: pytest.FixtureRequest) -> AsyncIterator[Slots]:
    if request.param == "redis":
        if not REDIS_URL:
            pytest.skip("needs ALICE_TEST_REDIS_URL")
        made: Slots = RedisSlots(REDIS_URL, f"test-{uuid.uuid4().hex[:12]}")
    else:
        made = MemorySlots()
    await made.start()
    try:
        yield made
    finally:
        await made.close()


async def test_limit_per_key_and_kind_release_is_idempotent(slots: Slots) -> None:
    a = [await slots.acquire("streams", "u1", 3) for _ in range(3)]
    assert all(s is not None for s in a)
    assert await slots.acquire("streams", "u1", 3) is None
    assert await slots.acquire("streams", "u2", 3) is not None  # another key
    assert await slots.acquire("replies", "u1", 3) is not None  # another kind
    assert await slots.held("streams", "u1") == 3
    first = a[0]
    assert first is not None
    await first.release()
    await first.release()  # a second release gives nothing more back
    assert await slots.held("streams", "u1") == 2
    assert await slots.acquire("streams", "u1", 3) is not None
    assert await slots.acquire("streams", "u1", 3) is None


async def test_racing_for_the_last_slots_never_overshoots(slots: Slots) -> None:
    got = await asyncio.gather(*(slots.acquire("streams", "race", 5) for _ in range(40)))
    assert sum(g is not None for g in got) == 5
    assert await slots.held("streams", "race") == 5


async def test_release_from_a_cancelled_task_still_frees_the_slot(slots: Slots) -> None:
    started = asyncio.Event()

    async def holder() -> None:
        slot = await slots.acquire("streams", "cancel", 1)
        assert slot is not None
        try:
            started.set()
            await asyncio.sleep(60)
        finally:
            await slot.release()

    task = asyncio.create_task(holder())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if await slots.held("streams", "cancel") == 0:
            break
        await asyncio.sleep(0.02)
    assert await slots.acquire("streams", "cancel", 1) is not None


@needs_redis
async def test_two_processes_share_one_count() -> None:
    assert REDIS_URL
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    a, b = RedisSlots(REDIS_URL, prefix), RedisSlots(REDIS_URL, prefix)
    try:
        assert await a.acquire("streams", "u", 2) is not None
        assert await b.acquire("streams", "u", 2) is not None
        assert await a.acquire("streams", "u", 2) is None
        assert await b.acquire("streams", "u", 2) is None
    finally:
        await a.close()
        await b.close()


_HOLDER = """
import asyncio, sys
from alice.services.slots import RedisSlots

async def main():
    slots = RedisSlots(sys.argv[1], sys.argv[2], lease_seconds=float(sys.argv[3]))
    await slots.start()
    for _ in range(2):
        assert await slots.acquire("streams", "u", 2) is not None
    print("held", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@needs_redis
async def test_slots_of_a_killed_process_expire_with_their_lease() -> None:
    """A live holder keeps its slots past several leases (it renews them); killed with
    SIGKILL (no release), its slots come free within a lease."""
    assert REDIS_URL
    lease = 1.0
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLDER), REDIS_URL, prefix, str(lease)],
        stdout=subprocess.PIPE,
    )
    other = RedisSlots(REDIS_URL, prefix, lease_seconds=lease)
    try:
        assert holder.stdout is not None
        line = await asyncio.to_thread(holder.stdout.readline)
        assert line.strip() == b"held"
        # Alive: three leases later its slots are still held.
        await asyncio.sleep(3 * lease)
        assert await other.acquire("streams", "u", 2) is None
        assert await other.held("streams", "u") == 2
        holder.kill()
        holder.wait(5)
        killed_at = time.monotonic()
        while await other.held("streams", "u") > 0:
            assert time.monotonic() - killed_at < lease + 1.0, "the dead process's slots stayed"
            await asyncio.sleep(0.05)
        assert await other.acquire("streams", "u", 2) is not None
        assert await other.acquire("streams", "u", 2) is not None
    finally:
        holder.kill()
        holder.wait(5)
        await other.close()


async def test_unreachable_redis_is_an_error_the_caller_can_handle() -> None:
    slots = RedisSlots("redis://127.0.0.1:1/0", "unreachable")
    try:
        with pytest.raises(SlotsUnavailableError):
            await slots.acquire("streams", "u", 2)
        with pytest.raises(SlotsUnavailableError):
            await slots.held("streams", "u")
    finally:
        await slots.close()
