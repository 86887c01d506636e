"""SPEC sections 8 and 9, hardening, in process: security headers on every kind of response,
/metrics behind ALICE_METRICS_TOKEN, 401s counted per client address, one limit key for every
spelling of an address (IPv4-mapped as IPv4, IPv6 by its /64), and Argon2 hashing that answers
503 rather than queueing without end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from alice.core.config import Settings
from alice.core.ratelimit import limit_key
from alice.main import create_app
from tests.chatkit import send
from tests.conftest import PASSWORD, client_for

AUTH = "/api/v1/auth"
API_CSP = "default-src 'none'; frame-ancestors 'none'"
GARBAGE = {"Authorization": "Bearer not.a.token"}


def assert_hardened(resp: httpx.Response, csp: str | None = API_CSP) -> None:
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert resp.headers["x-frame-options"] == "DENY"
    if csp is not None:
        assert resp.headers["content-security-policy"] == csp
    assert "server" not in resp.headers


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=60):
        yield application


# --- headers ----------------------------------------------------------------------------------


async def test_json_stream_and_error_responses_carry_the_security_headers(client, user):
    me = await client.get(f"{AUTH}/me", headers=user.headers)
    assert me.status_code == 200
    assert_hardened(me)
    stream = await send(client, user.access_token, "hello")
    assert stream.status == 200 and "text/event-stream" in stream.headers["content-type"]
    assert_hardened(httpx.Response(200, headers=stream.headers))
    for resp in (
        await client.get("/nowhere"),  # 404 from routing
        await client.get(f"{AUTH}/me"),  # 401 from the dependency
        await client.post(f"{AUTH}/login", json={}),  # 422
        await client.delete("/health"),  # 405
    ):
        assert resp.status_code >= 400 and resp.json()["code"]
        assert_hardened(resp)


async def test_html_documents_keep_a_policy_of_their_own_and_are_never_framed(client):
    docs = await client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert_hardened(docs, csp=None)
    policy = docs.headers["content-security-policy"]
    # Not the API's policy (that would block the page's own scripts), but never framed.
    assert policy != API_CSP and "frame-ancestors 'none'" in policy


async def test_internal_error_carries_the_headers(client, app, user, monkeypatch):
    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.state.services.chat, "list_conversations", broken)
    resp = await client.get("/api/v1/chat/conversations", headers=user.headers)
    assert resp.status_code == 500 and resp.json()["code"] == "INTERNAL_ERROR"
    assert_hardened(resp)


# --- /metrics ---------------------------------------------------------------------------------


async def test_metrics_need_the_token_when_one_is_set(make_settings, settings):
    token = "metrics-token-0123456789abcdef"
    async with running(make_settings(metrics_token=token)) as app, client_for(app) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["code"] == "UNAUTHORIZED"
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "alice_" not in refused.text
        ok = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and "alice_" in ok.text
        assert ok.headers["content-type"].startswith("text/plain")


async def test_metrics_are_open_without_a_token(client):
    assert (await client.get("/metrics")).status_code == 200


# --- 401s counted per client address ----------------------------------------------------------


async def test_sixty_first_garbage_token_from_one_address_is_429(app, user):
    async with client_for(app, "203.0.113.5") as guesser:
        for i in range(60):
            resp = await guesser.get(f"{AUTH}/me", headers=GARBAGE if i % 2 else {})
            assert resp.status_code == 401, i
        refused = await guesser.get(f"{AUTH}/me", headers=GARBAGE)
        assert refused.status_code == 429
        assert refused.json()["code"] == "RATE_LIMIT_EXCEEDED"
        assert int(refused.headers["retry-after"]) >= 1
        # Other protected routes share the count.
        assert (await guesser.get("/api/v1/chat/conversations", headers=GARBAGE)).status_code == 429
        # Only refusals are counted: a valid token from that address is still served.
        assert (await guesser.get(f"{AUTH}/me", headers=user.headers)).status_code == 200
    async with client_for(app, "203.0.113.6") as other:
        assert (await other.get(f"{AUTH}/me", headers=GARBAGE)).status_code == 401


async def test_successful_requests_do_not_count_as_refusals(app, make_user):
    async with client_for(app, "203.0.113.7") as c:
        for _ in range(3):
            u = await make_user()
            for _ in range(30):
                assert (await c.get(f"{AUTH}/me", headers=u.headers)).status_code == 200
        assert (await c.get(f"{AUTH}/me", headers=GARBAGE)).status_code == 401


async def test_refusals_are_not_counted_with_limits_off(make_settings, settings):
    async with running(make_settings(rate_limit_enabled=False)) as app, client_for(app) as c:
        for _ in range(70):
            assert (await c.get(f"{AUTH}/me", headers=GARBAGE)).status_code == 401


# --- one key per address ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spellings", "key"),
    [
        (["10.6.6.6", "::ffff:10.6.6.6", "::ffff:a06:606", "::FFFF:0a06:0606"], "10.6.6.6"),
        (
            ["2001:db8:1:2::1", "2001:DB8:1:2:ffff:ffff:ffff:ffff", "2001:0db8:0001:0002::9"],
            "2001:db8:1:2::/64",
        ),
    ],
)
def test_every_spelling_of_an_address_is_one_key(spellings: list[str], key: str) -> None:
    assert {limit_key(s) for s in spellings} == {key}


def test_neighbouring_networks_stay_apart() -> None:
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("10.6.6.7") != limit_key("10.6.6.6")
    assert limit_key("::ffff:10.6.6.7") == "10.6.6.7"


@pytest.fixture
async def behind_proxy(make_settings: Callable[..., Settings], settings: Settings) -> Any:
    async with running(make_settings(forwarded_allow_ips="127.0.0.1")) as app:
        async with client_for(app) as c:
            yield c


async def test_three_spellings_behind_the_trusted_proxy_share_one_bucket(behind_proxy):
    spellings = ["10.6.6.6", "::ffff:10.6.6.6", "::ffff:a06:606"]
    for i in range(60):
        xff = {"X-Forwarded-For": spellings[i % 3]}
        assert (await behind_proxy.get(f"{AUTH}/me", headers={**GARBAGE, **xff})).status_code == 401
    for spelling in spellings:
        xff = {"X-Forwarded-For": spelling}
        resp = await behind_proxy.get(f"{AUTH}/me", headers={**GARBAGE, **xff})
        assert resp.status_code == 429, spelling
    # The login limit (5/min per address) too.
    body = {"email": "nobody@example.com", "password": "Wrong1234"}
    for i in range(5):
        xff = {"X-Forwarded-For": spellings[i % 3]}
        assert (await behind_proxy.post(f"{AUTH}/login", json=body, headers=xff)).status_code == 401
    sixth = await behind_proxy.post(
        f"{AUTH}/login", json=body, headers={"X-Forwarded-For": "::ffff:a06:606"}
    )
    assert sixth.status_code == 429


async def test_ipv6_clients_are_counted_by_their_64(behind_proxy):
    body = {"email": "nobody@example.com", "password": "Wrong1234"}
    for i in range(5):
        xff = {"X-Forwarded-For": f"2001:db8:5:6::{i + 1:x}"}
        assert (await behind_proxy.post(f"{AUTH}/login", json=body, headers=xff)).status_code == 401
    same_64 = {"X-Forwarded-For": "2001:db8:5:6:dead:beef:0:1"}
    assert (await behind_proxy.post(f"{AUTH}/login", json=body, headers=same_64)).status_code == 429
    next_64 = {"X-Forwarded-For": "2001:db8:5:7::1"}
    assert (await behind_proxy.post(f"{AUTH}/login", json=body, headers=next_64)).status_code == 401


# --- Argon2: a bounded wait ---------------------------------------------------------------------


async def test_a_login_that_waits_too_long_for_its_hash_is_503(make_settings, settings):
    """One hash at a time, a wait of 50 ms at most, hashes that take longer: of a burst of
    logins from as many addresses, some are answered 503 SERVER_BUSY at once, none waits for
    all the others, and every one ends as 200, 401 or 503."""
    slow = make_settings(
        argon2_time_cost=3,
        argon2_memory_kib=32768,
        argon2_parallelism=1,
        argon2_max_concurrent=1,
        argon2_max_wait_seconds=0.05,
    )
    async with running(slow) as app:
        await app.state.services.auth.register("busy@example.com", PASSWORD, None)

        async def login(i: int) -> httpx.Response:
            async with client_for(app, f"198.51.100.{i}") as c:
                password = PASSWORD if i % 2 else "Wrong1234"
                return await c.post(
                    f"{AUTH}/login", json={"email": "busy@example.com", "password": password}
                )

        results = await asyncio.gather(*(login(i) for i in range(8)))
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) <= {200, 401, 503}, statuses
    busy = [r for r in results if r.status_code == 503]
    assert busy, statuses
    for r in busy:
        assert r.json() == {
            "detail": "The server is busy; try again in a moment.",
            "code": "SERVER_BUSY",
        }
        assert r.headers["retry-after"] == "1"
    assert any(r.status_code in (200, 401) for r in results)


async def test_hashing_turns_are_given_back(make_settings, settings):
    """After a burst with refusals, every turn is free again: logins one after another all
    get their hash."""
    slow = make_settings(
        argon2_time_cost=2,
        argon2_memory_kib=16384,
        argon2_parallelism=1,
        argon2_max_concurrent=2,
        argon2_max_wait_seconds=0.02,
    )
    async with running(slow) as app:
        hashing = app.state.services.auth
        await hashing.register("turns@example.com", PASSWORD, None)
        burst = await asyncio.gather(
            *(hashing.login("turns@example.com", PASSWORD) for _ in range(10)),
            return_exceptions=True,
        )
        assert any(isinstance(r, Exception) for r in burst)
        for _ in range(4):
            pair = await hashing.login("turns@example.com", PASSWORD)
            assert pair.access_token
