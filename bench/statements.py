"""The statements of a reply's hot path on SQLite: through SQLAlchemy's execution against on
the driver (`alice.core.database.execute`, a `constant` statement compiled once).

    python -m bench.statements [--rounds 3] [--count 5000]

On one connection of a synchronous engine, as Direct's inline connections are, each round
times `count` runs of: the user of an access token (`auth._USER_OF_SESSION`, the read of
every authenticated request), the active branch's leaf (`branches._LEAF`, read by every
message sent to a conversation) and a reply's end (`generation._END`, an UPDATE of a reply
that is no longer streaming, so that each run does the same work), and prints µs a run.
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

from sqlalchemy import Connection, create_engine

from alice.core.config import Settings
from alice.core.database import execute
from alice.core.migrate import upgrade
from alice.main import create_app
from alice.models import MessageStatus
from alice.services import auth, branches, generation
from bench.reply_ends import sqlite_settings


async def _seed(settings: Settings) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]:
    """A user with a session, and a conversation with one reply: their ids."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services = app.state.services
        pair = await services.auth.register("bench@example.com", "correct horse battery", None)
        user = await services.auth.authenticate(pair.access_token)
        start = await services.chat.begin_reply(user.id, "hello", None)
    return user.id, user.session_id, start.conversation_id, start.message_id


def _time(run: Callable[[], Any], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        run()
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.statements", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="alice-bench-statements-"))
    db = data / "alice.db"
    settings = sqlite_settings(data)
    try:
        upgrade(settings)
        user_id, session_id, conversation_id, message_id = asyncio.run(_seed(settings))
        engine = create_engine(f"sqlite:///{db}")
        conn: Connection = engine.connect()
        cases: list[tuple[str, Any, dict[str, Any]]] = [
            (
                "the user of a token",
                auth._USER_OF_SESSION,
                {"user_id": user_id, "session_id": session_id},
            ),
            ("the branch's leaf", branches._LEAF, {"conversation_id": conversation_id}),
            (
                "a reply's end (matching no row)",
                generation._END,
                {
                    "end_id": message_id,
                    "end_status": MessageStatus.COMPLETE,
                    "end_content": "x" * 200,
                    "end_token_count": 50,
                    "end_input_tokens": 11,
                    "end_output_tokens": 50,
                    "end_seq": 52,
                },
            ),
        ]
        # The reply ends once: every timed run of its end then matches no row.
        execute(conn, generation._END, cases[2][2])
        conn.commit()
        for name, statement, params in cases:
            reads = name != cases[2][0]

            def through(s: Any = statement, p: Any = params, reads: bool = reads) -> Any:
                result = conn.execute(s, p)
                return result.all() if reads else result

            def driver(s: Any = statement, p: Any = params) -> Any:
                return execute(conn, s, p).all()

            times: dict[str, list[float]] = {"through": [], "driver": []}
            for _ in range(args.rounds):
                for key, run in (("through", through), ("driver", driver)):
                    times[key].append(_time(run, args.count))
                    conn.rollback()
            print(
                f"{name}: {statistics.median(times['through']):.1f} µs through SQLAlchemy, "
                f"{statistics.median(times['driver']):.1f} µs on the driver "
                f"(medians of {args.rounds} × {args.count})"
            )
        conn.close()
        engine.dispose()
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
