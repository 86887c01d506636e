"""The writer's batch, packed into RESP by hand: the one command that carries every token
of every reply generated here.

Why by hand: a batch of 256 token entries is one EVALSHA of ~1,000 arguments, and redis-py's
generic path (the registered script's call: argument tuples copied, each value encoded and
packed, the reply parsed through its callbacks) cost the owner 14.4-15.1 µs of CPU per
appended token against 8.5-9.5 µs packed here, where a reply's keys are packed once and each
value is one bytes format (500 replies × 100 tokens appended and flushed, owner process CPU;
2026-12-07, a busy 2-core machine, the two alternated in the same minutes).
The script itself is still redis-py's: loaded with `register_script`, sent by its SHA, loaded
again when Redis answers NOSCRIPT. Everything else goes through redis-py's own commands.
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


async def send_script(
    client: Redis, script: AsyncScript, keys: list[bytes], args: list[bytes]
) -> Any:
    """Send a packed EVALSHA on a pooled connection and read its reply; when Redis does not
    know the script (NOSCRIPT: nothing ran), load it and send again."""
    pool = client.connection_pool
    for attempt in (1, 2):
        packed = evalsha(script, keys, args)
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            return await conn.read_response()
        except NoScriptError:
            if attempt == 2:
                raise
        finally:
            await pool.release(conn)
        script.sha = await client.script_load(script.script)
    return None
