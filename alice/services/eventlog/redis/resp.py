"""The writer's batch, packed into RESP by hand: the one command that carries every token
of every reply generated here.

Why by hand: a batch of 256 token entries is one EVALSHA of ~1,000 arguments, and redis-py's
generic path (the registered script's call: argument tuples copied, each value encoded and
packed, the reply parsed through its callbacks) cost the owner 14.4-15.1 µs of CPU per
appended token against 8.5-9.5 µs packed here, where a reply's keys are packed once and each
value is one bytes format (500 replies × 100 tokens appended and flushed, owner process CPU;
2026-12-07, a busy 2-core machine, the two alternated in the same minutes).
The script itself is still redis-py's: loaded with `register_script`, sent by its SHA, loaded
again when Redis answers NOSCRIPT.

The tailer's XREAD (`mirror.py`) is packed here too, and its reply read as Redis sent it: one
command over every reply followed from another process, every 20 ms, each reply's key packed
once. Through `Redis.xread` the command's building and encoding and the reply's parsing into
a dict per entry were a quarter of the reading process's samples in a py-spy profile (1,000
followed replies of 30 tokens/s, `bench/redis_eventlog_load.py --readers 1000`). Four
alternated runs each, the reading process's CPU share 0.86 -> 0.78 (medians; 0.84 / 0.96 /
0.83 / 0.88 against 0.74 / 0.82 / 0.70 / 0.81), append-to-read p99 139 -> 121 ms.
Everything else goes through redis-py's own commands.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def evalsha(script: AsyncScript, keys: list[bytes], args: list[bytes]) -> bytes:
    """`EVALSHA <sha> <numkeys> keys... args...`, with keys and args already bulk strings."""
    head = bulk(b"EVALSHA") + bulk(script.sha.encode()) + bulk(b"%d" % len(keys))
    return b"*%d\r\n%s%s%s" % (3 + len(keys) + len(args), head, b"".join(keys), b"".join(args))


def xread(count: int, block_ms: int, keys: list[bytes], ids: list[bytes]) -> bytes:
    """`XREAD COUNT <count> BLOCK <block_ms> STREAMS keys... ids...`, with keys and ids
    already bulk strings."""
    head = b"".join(
        bulk(part) for part in (b"XREAD", b"COUNT", b"%d" % count, b"BLOCK", b"%d" % block_ms)
    )
    return b"*%d\r\n%s%s%s%s" % (
        6 + len(keys) + len(ids),
        head,
        bulk(b"STREAMS"),
        b"".join(keys),
        b"".join(ids),
    )


async def send_packed(client: Redis, packed: bytes) -> Any:
    """Send a packed command on one of `client`'s connections and read its reply as Redis
    sent it (no redis-py reply callback). A connection whose reply was not read whole (a
    failure, a cancel) is closed by redis-py's `read_response`, never handed to the next
    command (`test_a_packed_command_cancelled_mid_reply_never_hands_its_connection_on`)."""
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(packed, check_health=False)
        return await conn.read_response()
    finally:
        await pool.release(conn)


async def send_script(
    client: Redis, script: AsyncScript, keys: list[bytes], args: list[bytes]
) -> Any:
    """Send a packed EVALSHA and read its reply; when Redis does not know the script
    (NOSCRIPT: nothing ran), load it and send again."""
    for attempt in (1, 2):
        try:
            return await send_packed(client, evalsha(script, keys, args))
        except NoScriptError:
            if attempt == 2:
                raise
        script.sha = await client.script_load(script.script)
    return None
