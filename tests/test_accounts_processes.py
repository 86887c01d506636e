"""SPEC section 13 across real processes: a session ended through one `alice serve` is
refused by another at once, and a password changed through one ends the sessions the other
serves. On one SQLite file (each process remembers users until SQLite's data_version moves)
and, when configured, on PostgreSQL + Redis (the two processes of test_multiprocess)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, bearer
from tests.processes import Proc, migrate, process_env
from tests.test_multiprocess import cluster  # noqa: F401

AUTH = "/api/v1/auth"
NEW_PASSWORD = "Fresh-Start-2026"


@pytest.fixture(scope="module")
def sqlite_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    workdir = tmp_path_factory.mktemp("accounts-sqlite")
    env = process_env(
        workdir,
        ALICE_DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'alice.db'}",
        ALICE_RATE_LIMIT_ENABLED="false",
    )
    migrate(env, workdir)
    a, b = Proc("a", env, workdir).start(), Proc("b", env, workdir).start()
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def pair(request: pytest.FixtureRequest) -> tuple[Proc, Proc]:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_pair")
    from tests.conftest import POSTGRES_URL, REDIS_URL

    if not (POSTGRES_URL and REDIS_URL):
        pytest.skip("needs ALICE_TEST_POSTGRES_URL and ALICE_TEST_REDIS_URL")
    c = request.getfixturevalue("cluster")
    return c.a, c.b


def client(proc: Proc) -> httpx.AsyncClient:
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
    return httpx.AsyncClient(base_url=proc.url, timeout=30, headers={"X-Forwarded-For": ip})


async def register_and_login(c: httpx.AsyncClient) -> tuple[str, dict[str, Any], dict[str, Any]]:
    email = f"mp-acc-{uuid.uuid4().hex[:10]}@example.com"
    first = await c.post(f"{AUTH}/register", json={"email": email, "password": PASSWORD})
    assert first.status_code == 201, first.text
    second = await c.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD})
    assert second.status_code == 200, second.text
    return email, first.json(), second.json()


async def test_session_ended_through_a_is_refused_by_b_at_once(pair):
    a, b = pair
    async with client(a) as ca, client(b) as cb:
        _email, mine, other = await register_and_login(ca)
        # B has answered both tokens (and, on SQLite, remembers the user for them).
        for token in (mine["access_token"], other["access_token"]):
            assert (await cb.get(f"{AUTH}/me", headers=bearer(token))).status_code == 200
        listed = (await ca.get(f"{AUTH}/sessions", headers=bearer(mine["access_token"]))).json()
        victim = next(s for s in listed["items"] if not s["current"])
        ended = await ca.delete(
            f"{AUTH}/sessions/{victim['id']}", headers=bearer(mine["access_token"])
        )
        assert ended.status_code == 204
        refused = await cb.get(f"{AUTH}/me", headers=bearer(other["access_token"]))
        assert refused.status_code == 401 and refused.json()["code"] == "INVALID_TOKEN"
        assert (await cb.get(f"{AUTH}/me", headers=bearer(mine["access_token"]))).status_code == 200


async def test_password_changed_through_a_ends_the_sessions_b_serves(pair):
    a, b = pair
    async with client(a) as ca, client(b) as cb:
        _email, mine, other = await register_and_login(ca)
        for token in (mine["access_token"], other["access_token"]):
            assert (await cb.get(f"{AUTH}/me", headers=bearer(token))).status_code == 200
        changed = await ca.post(
            f"{AUTH}/password",
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers=bearer(mine["access_token"]),
        )
        assert changed.status_code == 200, changed.text
        for token in (mine["access_token"], other["access_token"]):
            refused = await cb.get(f"{AUTH}/me", headers=bearer(token))
            assert refused.status_code == 401 and refused.json()["code"] == "INVALID_TOKEN"
        fresh = changed.json()["access_token"]
        assert (await cb.get(f"{AUTH}/me", headers=bearer(fresh))).status_code == 200
