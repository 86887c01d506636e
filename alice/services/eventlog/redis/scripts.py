"""The Lua of the Redis event log (`*.lua` beside this file), registered with redis-py's
script support: EVALSHA, and SCRIPT LOAD when Redis does not know a script (NOSCRIPT)."""

from __future__ import annotations

from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def _lua(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


BATCH_LUA = _lua("batch.lua")
MARK_LOST_LUA = _lua("mark_lost.lua")


def register(client: Redis) -> tuple[AsyncScript, AsyncScript]:
    """The writer's batch script and the reaper's mark-lost script, bound to `client`."""
    return client.register_script(BATCH_LUA), client.register_script(MARK_LOST_LUA)
