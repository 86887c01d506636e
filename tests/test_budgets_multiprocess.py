"""SPEC section 15 across processes: two `alice serve` processes on one PostgreSQL database and
one Redis share the running-replies cap (Redis) and the daily budget (the database)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chatkit import CHAT, background_send, eventually, nonce, send
from tests.conftest import POSTGRES_URL, REDIS_URL
from tests.fakes.anthropic_server import DEFAULT_TOKENS
from tests.processes import Proc, migrate, postgres_and_redis, process_env
from tests.test_multiprocess import client, register

pytestmark = pytest.mark.skipif(
    not (POSTGRES_URL and REDIS_URL),
    reason="needs ALICE_TEST_POSTGRES_URL and ALICE_TEST_REDIS_URL",
)
CAP = 3
# What the fake reports for a first message: 10 + 1 input tokens, DEFAULT_TOKENS output.
FIRST_REPLY_COST = 11 + DEFAULT_TOKENS


@pytest.fixture(scope="module")
def pair(fake_anthropic: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    workdir = tmp_path_factory.mktemp("budgets")
    with postgres_and_redis("alice-budget") as storage:
        env = process_env(
            workdir,
            **storage,
            ANTHROPIC_API_KEY="test-key",
            ANTHROPIC_BASE_URL=fake_anthropic.base_url,
            # The budgets hold with every request limit off.
            ALICE_RATE_LIMIT_ENABLED="false",
            ALICE_USER_MAX_RUNNING_REPLIES=str(CAP),
            ALICE_USER_DAILY_TOKENS=str(FIRST_REPLY_COST),
        )
        migrate(env, workdir)
        procs: list[Proc] = []
        try:
            procs = [Proc(name, env, workdir).start() for name in ("a", "b")]
            for proc in procs:
                proc.wait_ready()
            yield procs
        finally:
            for proc in procs:
                proc.stop()


async def test_running_replies_cap_holds_across_two_processes(pair):
    a, b = pair
    async with client(a) as ca, client(b) as cb:
        user = await register(ca)
        token = user["access_token"]
        tag = nonce()
        started = [
            background_send(c, token, f"[[hang]] {tag} {i}") for i in range(10) for c in (ca, cb)
        ]
        await eventually(lambda: all(out.status for out, _ in started), timeout=30)
        statuses = sorted(out.status for out, _ in started)
        assert statuses == [200] * CAP + [429] * (20 - CAP), statuses
        assert {out.body["code"] for out, _ in started if out.status == 429} == {
            "TOO_MANY_GENERATIONS"
        }
        running = [out for out, _ in started if out.status == 200]
        await eventually(lambda: all(out.events for out in running), timeout=10)
        for out in running:
            conv = out.data(0)["conversation_id"]
            resp = await ca.post(
                f"{CHAT}/conversations/{conv}/stop",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert resp.status_code in (200, 204)
        await asyncio.gather(*(task for _, task in started))


async def test_daily_budget_spent_on_one_process_is_refused_on_the_other(pair):
    a, b = pair
    async with client(a) as ca, client(b) as cb:
        user = await register(ca)
        first = await send(ca, user["access_token"], "spend")
        assert first.terminal.event == "done"
        assert first.data(-1)["total_tokens"] == FIRST_REPLY_COST
        refused = await send(cb, user["access_token"], "more")
        assert refused.status == 429 and refused.body["code"] == "QUOTA_EXCEEDED"
        assert 1 <= int(refused.headers["retry-after"]) <= 86400
