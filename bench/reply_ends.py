"""A reply's end on the embedded default (SQLite, inline on the loop): in a transaction of its
own, against several to a transaction as `GenerationRegistry._commit_end` groups them.

    python -m bench.reply_ends [--replies 100] [--per-commit 10] [--rounds 3]

Each round starts `2 × replies` replies (`ChatService.begin_reply`, a new conversation each),
then ends half of them one to a transaction and the other half `per-commit` to a
transaction, with the statements a reply's end runs (`_END`: status, text of 50 words,
tokens; the user's usage-ledger upsert), and prints the wall time an end (µs; the work is
all on this thread). The end's text goes into the search index by trigger, as in the app.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from alice.core.config import Settings
from alice.core.database import rowcount
from alice.core.migrate import upgrade
from alice.main import create_app
from alice.models import MessageStatus
from alice.services import generation

TEXT = " ".join(f"word{i}" for i in range(50))


def _end(services: Any, user_id: uuid.UUID, message_id: uuid.UUID) -> Callable[[Connection], bool]:
    params = {
        "end_id": message_id,
        "end_status": MessageStatus.COMPLETE,
        "end_content": TEXT,
        "end_token_count": 50,
        "end_input_tokens": 11,
        "end_output_tokens": 50,
        "end_seq": 52,
    }
    ledger = services.usage.record_statement(user_id, 11, 50, 1)

    def work(conn: Connection) -> bool:
        won = bool(rowcount(conn.execute(generation._END, params)))
        if won and ledger is not None:
            conn.execute(*ledger)
        return won

    return work


def sqlite_settings(data: Path) -> Settings:
    """The embedded default in `data`, with no rate limits and cheap Argon2 (a bench of the
    database, not of logins)."""
    return Settings(
        data_dir=data,
        database_url=f"sqlite+aiosqlite:///{data / 'alice.db'}",
        rate_limit_enabled=False,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        argon2_parallelism=1,
    )


async def run(settings: Settings, replies: int, per_commit: int, rounds: int) -> None:
    app = create_app(settings)
    alone: list[float] = []
    grouped: list[float] = []
    async with app.router.lifespan_context(app):
        services = app.state.services
        direct = services.generations._direct
        session = await services.auth.register("ends@example.com", "correct horse battery", None)
        user = await services.auth.authenticate(session.access_token)
        for r in range(rounds):
            starts = [
                await services.chat.begin_reply(user.id, f"round {r} reply {i}", None)
                for i in range(2 * replies)
            ]
            works = [_end(services, user.id, s.message_id) for s in starts]
            t = time.perf_counter()
            for work in works[:replies]:
                assert await direct.transaction(work)
            alone.append((time.perf_counter() - t) / replies * 1e6)
            rest = works[replies:]
            t = time.perf_counter()
            for i in range(0, replies, per_commit):
                group = rest[i : i + per_commit]
                assert all(await direct.transaction(lambda c, g=group: [w(c) for w in g]))
            grouped.append((time.perf_counter() - t) / replies * 1e6)
            print(
                f"round {r + 1}: one end a transaction {alone[-1]:.0f} µs an end, "
                f"{per_commit} to a transaction {grouped[-1]:.0f} µs an end"
            )
    print(
        f"median of {rounds}: {statistics.median(alone):.0f} µs alone, "
        f"{statistics.median(grouped):.0f} µs at {per_commit} to a transaction"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reply_ends", description=__doc__)
    parser.add_argument("--replies", type=int, default=100)
    parser.add_argument("--per-commit", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="alice-bench-ends-"))
    settings = sqlite_settings(data)
    upgrade(settings)  # before the loop: it runs one of its own
    try:
        asyncio.run(run(settings, args.replies, args.per_commit, args.rounds))
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
