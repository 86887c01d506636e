"""SPEC section 13, first half: the profile, the password change and the sessions, each rule
by a test that a wrong implementation fails (SQLite, and PostgreSQL + Redis when set)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from alice.core.config import Settings
from alice.main import create_app
from tests.conftest import PASSWORD, assert_error, bearer, client_for

AUTH = "/api/v1/auth"
NEW_PASSWORD = "Fresh-Start-2026"


async def login(
    c: httpx.AsyncClient, email: str, password: str = PASSWORD, ua: str | None = None
) -> dict[str, Any]:
    headers = {"User-Agent": ua} if ua else {}
    resp = await c.post(
        f"{AUTH}/login", json={"email": email, "password": password}, headers=headers
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def sessions(c: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    resp = await c.get(f"{AUTH}/sessions", headers=bearer(token))
    assert resp.status_code == 200, resp.text
    return list(resp.json()["items"])


# --- PATCH /me --------------------------------------------------------------------------------


async def test_patch_me_sets_display_name_and_ignores_other_fields(client, user):
    resp = await client.patch(
        f"{AUTH}/me",
        json={"display_name": "  Ada Lovelace  ", "email": "evil@example.com", "is_active": False},
        headers=user.headers,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["display_name"] == "Ada Lovelace"
    assert body["email"] == user.email
    assert body["is_active"] is True
    again = (await client.get(f"{AUTH}/me", headers=user.headers)).json()
    assert again == body


@pytest.mark.parametrize("body", [{}, {"display_name": "   "}, {"display_name": "x" * 101}])
async def test_patch_me_needs_a_valid_display_name(client, user, body):
    resp = await client.patch(f"{AUTH}/me", json=body, headers=user.headers)
    assert_error(resp, 422, "VALIDATION_ERROR", "body.display_name")


async def test_patch_me_needs_a_token(client):
    resp = await client.patch(f"{AUTH}/me", json={"display_name": "X"})
    assert_error(resp, 401, "UNAUTHORIZED")


# --- POST /password ---------------------------------------------------------------------------


async def test_password_change_ends_every_session_and_starts_one(client, app, user):
    other = await login(client_for(app, "10.0.0.2"), user.email)
    resp = await client.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=user.headers,
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    fresh = resp.json()
    # Every earlier access and refresh token, the caller's and the other session's, is dead.
    for token in (user.access_token, other["access_token"]):
        assert_error(await client.get(f"{AUTH}/me", headers=bearer(token)), 401, "INVALID_TOKEN")
    for token in (user.refresh_token, other["refresh_token"]):
        resp = await client.post(f"{AUTH}/refresh", json={"refresh_token": token})
        assert_error(resp, 401, "INVALID_TOKEN")
    # The new pair works and is the only session left.
    assert (
        await client.get(f"{AUTH}/me", headers=bearer(fresh["access_token"]))
    ).status_code == 200
    listed = await sessions(client, fresh["access_token"])
    assert len(listed) == 1 and listed[0]["current"] is True
    refreshed = await client.post(f"{AUTH}/refresh", json={"refresh_token": fresh["refresh_token"]})
    assert refreshed.status_code == 200
    # Only the new password logs in.
    bad = await client.post(f"{AUTH}/login", json={"email": user.email, "password": PASSWORD})
    assert_error(bad, 401, "AUTHENTICATION_FAILED")
    await login(client, user.email, NEW_PASSWORD)


async def test_password_change_with_wrong_current_is_403_and_changes_nothing(client, user):
    resp = await client.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD + "x", "new_password": NEW_PASSWORD},
        headers=user.headers,
    )
    assert_error(resp, 403, "INVALID_PASSWORD")
    assert (await client.get(f"{AUTH}/me", headers=user.headers)).status_code == 200
    await login(client, user.email, PASSWORD)


async def test_wrong_current_passwords_count_toward_the_limit(client, user):
    for _ in range(5):
        resp = await client.post(
            f"{AUTH}/password",
            json={"current_password": "Wrong-Guess-1", "new_password": NEW_PASSWORD},
            headers=user.headers,
        )
        assert_error(resp, 403, "INVALID_PASSWORD")
    resp = await client.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=user.headers,
    )
    assert_error(resp, 429, "RATE_LIMIT_EXCEEDED")
    assert int(resp.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    "new_password",
    [
        "short1A",  # too short
        "nouppercase123",  # no upper-case letter
        "NoDigitsHere",  # no digit
        "Password1",  # one of the 10,000 most common (case-insensitively)
        "PASSWORD123",  # ditto
        "Trustno1",
    ],
)
async def test_password_change_follows_the_registration_rules(client, user, new_password):
    resp = await client.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": new_password},
        headers=user.headers,
    )
    assert_error(resp, 422, "VALIDATION_ERROR", "body.new_password")
    assert (await client.get(f"{AUTH}/me", headers=user.headers)).status_code == 200


async def test_password_change_refuses_the_current_password(client, user):
    resp = await client.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": PASSWORD},
        headers=user.headers,
    )
    assert_error(resp, 422, "VALIDATION_ERROR", "body.new_password")


async def test_password_change_refuses_the_email_local_part(client, make_user):
    someone = await make_user(email="Grace-Hopper1@example.com")
    resp = await client.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": "GRACE-HOPPER1"},
        headers=someone.headers,
    )
    assert_error(resp, 422, "VALIDATION_ERROR", "body.new_password")


# --- sessions ---------------------------------------------------------------------------------


async def test_sessions_list_live_logins_newest_first_with_ip_agent_and_current(app, user):
    async with client_for(app, "203.0.113.7") as phone, client_for(app, "2001:db8::42") as laptop:
        first = await login(phone, user.email, ua="Phone/1.0")
        second = await login(laptop, user.email, ua="Laptop/2.0 " + "x" * 300 + "\x00\x07")
        listed = await sessions(laptop, second["access_token"])
    # The session register started (no agent, the test client's IP) is the oldest.
    assert len(listed) == 3
    newest, middle, oldest = listed
    assert (newest["ip"], middle["ip"]) == ("2001:db8::42", "203.0.113.7")
    assert newest["current"] is True and middle["current"] is False and oldest["current"] is False
    assert newest["user_agent"].startswith("Laptop/2.0 ")
    assert len(newest["user_agent"]) == 200 and "\x00" not in newest["user_agent"]
    assert middle["user_agent"] == "Phone/1.0"
    assert set(newest) == {
        "id",
        "created_at",
        "last_used_at",
        "expires_at",
        "user_agent",
        "ip",
        "current",
    }
    assert newest["created_at"] >= middle["created_at"] >= oldest["created_at"]
    # `sid` of the access token is the session's id.
    claims = jwt.decode(first["access_token"], options={"verify_signature": False})
    assert claims["sid"] == middle["id"]


async def test_refresh_keeps_the_session_and_moves_last_used(client, user):
    before = (await sessions(client, user.access_token))[0]
    resp = await client.post(f"{AUTH}/refresh", json={"refresh_token": user.refresh_token})
    assert resp.status_code == 200
    token = resp.json()["access_token"]
    after = await sessions(client, token)
    assert len(after) == 1
    assert after[0]["id"] == before["id"] and after[0]["current"] is True
    assert after[0]["last_used_at"] > before["last_used_at"]
    assert after[0]["created_at"] == before["created_at"]
    assert after[0]["expires_at"] == before["expires_at"]


async def test_ending_a_session_refuses_its_tokens_at_once_and_spares_the_others(app, user):
    async with client_for(app, "198.51.100.1") as c:
        other = await login(c, user.email)
        # The other session's token is accepted (and remembered) before it is ended.
        assert (await c.get(f"{AUTH}/me", headers=bearer(other["access_token"]))).status_code == 200
        listed = await sessions(c, user.access_token)
        victim = next(s for s in listed if not s["current"])
        resp = await c.delete(f"{AUTH}/sessions/{victim['id']}", headers=user.headers)
        assert resp.status_code == 204, resp.text
        gone = await c.get(f"{AUTH}/me", headers=bearer(other["access_token"]))
        assert_error(gone, 401, "INVALID_TOKEN")
        resp = await c.post(f"{AUTH}/refresh", json={"refresh_token": other["refresh_token"]})
        assert_error(resp, 401, "INVALID_TOKEN")
        # The caller's session lives on, and the ended one is no longer listed.
        assert (await c.get(f"{AUTH}/me", headers=user.headers)).status_code == 200
        assert [s["id"] for s in await sessions(c, user.access_token)] != [victim["id"]]
        assert victim["id"] not in [s["id"] for s in await sessions(c, user.access_token)]
        again = await c.delete(f"{AUTH}/sessions/{victim['id']}", headers=user.headers)
        assert_error(again, 404, "SESSION_NOT_FOUND")


async def test_ending_the_current_session_logs_only_it_out(client, app, user):
    other = await login(client_for(app, "10.9.9.9"), user.email)
    mine = (await sessions(client, user.access_token))[-1]
    assert mine["current"]
    resp = await client.delete(f"{AUTH}/sessions/{mine['id']}", headers=user.headers)
    assert resp.status_code == 204
    assert_error(await client.get(f"{AUTH}/me", headers=user.headers), 401, "INVALID_TOKEN")
    ok = await client.get(f"{AUTH}/me", headers=bearer(other["access_token"]))
    assert ok.status_code == 200


async def test_someone_elses_session_is_404_like_a_missing_one(client, make_user):
    alice, mallory = await make_user(), await make_user()
    target = (await sessions(client, alice.access_token))[0]["id"]
    resp = await client.delete(f"{AUTH}/sessions/{target}", headers=mallory.headers)
    assert_error(resp, 404, "SESSION_NOT_FOUND")
    missing = await client.delete(f"{AUTH}/sessions/{uuid.uuid4()}", headers=mallory.headers)
    assert resp.json() == missing.json()
    # Alice's session is untouched.
    assert (await client.get(f"{AUTH}/me", headers=alice.headers)).status_code == 200


async def test_session_id_that_is_not_a_uuid_is_422(client, user):
    resp = await client.delete(f"{AUTH}/sessions/not-a-uuid", headers=user.headers)
    assert_error(resp, 422, "VALIDATION_ERROR")


async def test_logout_ends_every_listed_session(client, app, user):
    other = await login(client_for(app, "10.1.1.1"), user.email)
    assert (await client.post(f"{AUTH}/logout", headers=user.headers)).status_code == 204
    fresh = await login(client, user.email)
    listed = await sessions(client, fresh["access_token"])
    assert [s["current"] for s in listed] == [True]
    assert_error(
        await client.get(f"{AUTH}/me", headers=bearer(other["access_token"])), 401, "INVALID_TOKEN"
    )


async def test_access_token_without_sid_is_refused(client, app, user, settings):
    claims = jwt.decode(user.access_token, options={"verify_signature": False})
    claims.pop("sid")
    forged = jwt.encode(
        claims, settings.signing_key(), algorithm="HS256", headers={"typ": "at+jwt"}
    )
    assert_error(await client.get(f"{AUTH}/me", headers=bearer(forged)), 401, "INVALID_TOKEN")


async def test_access_token_with_another_users_sid_is_refused(client, make_user, settings):
    alice, mallory = await make_user(), await make_user()
    alice_sid = jwt.decode(alice.access_token, options={"verify_signature": False})["sid"]
    claims = jwt.decode(mallory.access_token, options={"verify_signature": False})
    claims["sid"] = alice_sid
    forged = jwt.encode(
        claims, settings.signing_key(), algorithm="HS256", headers={"typ": "at+jwt"}
    )
    assert_error(await client.get(f"{AUTH}/me", headers=bearer(forged)), 401, "INVALID_TOKEN")


async def test_session_ip_comes_from_a_trusted_proxy_only(make_settings, backend, settings):
    # `settings` created the database (schema) this test's other settings share.
    proxied = make_settings(forwarded_allow_ips="127.0.0.1")
    async with running(proxied) as app:
        user = await app.state.services.auth.register(
            f"p-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
        )
        async with (
            client_for(app, "127.0.0.1") as via_proxy,
            client_for(app, "192.0.2.9") as direct,
        ):
            email = (await via_proxy.get(f"{AUTH}/me", headers=bearer(user.access_token))).json()[
                "email"
            ]
            headers = {"X-Forwarded-For": "198.51.100.77"}
            await via_proxy.post(
                f"{AUTH}/login", json={"email": email, "password": PASSWORD}, headers=headers
            )
            await direct.post(
                f"{AUTH}/login", json={"email": email, "password": PASSWORD}, headers=headers
            )
            listed = await sessions(direct, user.access_token)
    ips = [s["ip"] for s in listed]
    assert ips[:2] == ["192.0.2.9", "198.51.100.77"]


# --- two processes on one database ------------------------------------------------------------


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=60):
        yield application


async def test_session_ended_on_one_process_is_refused_on_the_other(settings, app, user):
    # A second application on the same database: its own engine, connections and caches.
    async with running(settings) as other_app, client_for(other_app) as b:
        async with client_for(app, "10.2.2.2") as a:
            second = await login(a, user.email)
            for token in (user.access_token, second["access_token"]):
                assert (await b.get(f"{AUTH}/me", headers=bearer(token))).status_code == 200
            victim = next(s for s in await sessions(a, user.access_token) if not s["current"])
            assert (
                await a.delete(f"{AUTH}/sessions/{victim['id']}", headers=user.headers)
            ).status_code == 204
        resp = await b.get(f"{AUTH}/me", headers=bearer(second["access_token"]))
        assert_error(resp, 401, "INVALID_TOKEN")
        assert (await b.get(f"{AUTH}/me", headers=user.headers)).status_code == 200


async def test_password_changed_on_one_process_ends_sessions_the_other_serves(settings, app, user):
    async with running(settings) as other_app, client_for(other_app) as b:
        assert (await b.get(f"{AUTH}/me", headers=user.headers)).status_code == 200
        async with client_for(app) as a:
            resp = await a.post(
                f"{AUTH}/password",
                json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
                headers=user.headers,
            )
            assert resp.status_code == 200
        assert_error(await b.get(f"{AUTH}/me", headers=user.headers), 401, "INVALID_TOKEN")
        fresh = resp.json()["access_token"]
        assert (await b.get(f"{AUTH}/me", headers=bearer(fresh))).status_code == 200
