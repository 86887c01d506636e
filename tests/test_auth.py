"""SPEC section 4: every auth rule, each by a test that a wrong implementation fails."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import timedelta

import httpx
import jwt
import pytest
from sqlalchemy import select, update

from alice.core.security import hash_token, utcnow
from alice.models import RefreshToken, User
from tests.conftest import PASSWORD, UserSession, assert_error, client_for

AUTH = "/api/v1/auth"


async def register(client: httpx.AsyncClient, email: str, password: str = PASSWORD, **extra):
    return await client.post(
        f"{AUTH}/register", json={"email": email, "password": password, **extra}
    )


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get(f"{AUTH}/me", headers={"Authorization": f"Bearer {token}"})


# --- registration and validation -------------------------------------------------------


async def test_register_returns_tokens_and_stores_lowercased_email(client):
    resp = await register(client, "Ada.Lovelace@Example.COM")
    assert resp.status_code == 201
    body = resp.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert resp.headers["cache-control"] == "no-store"
    profile = (await me(client, body["access_token"])).json()
    assert profile["email"] == "ada.lovelace@example.com"
    assert profile["display_name"] == "ada.lovelace"
    assert profile["is_active"] is True
    assert set(profile) == {"id", "email", "display_name", "is_active", "created_at"}


async def test_register_duplicate_email_is_409_case_insensitive(client):
    assert (await register(client, "bob@example.com")).status_code == 201
    assert_error(await register(client, "BOB@Example.com"), 409, "EMAIL_ALREADY_EXISTS")


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("Short1A", "7 characters"),
        ("alllowercase1", "no upper-case letter"),
        ("NoDigitsHereAtAll", "no digit"),
        ("A1" + "x" * 127, "129 characters"),
        ("", "empty"),
    ],
)
async def test_register_weak_password_rejected_one_rule_at_a_time(client, password, reason):
    resp = await register(client, "weak@example.com", password)
    body = assert_error(resp, 422, "VALIDATION_ERROR")
    assert [e["field"] for e in body["errors"]] == ["body.password"], reason
    assert password not in json.dumps(body) or password == ""


@pytest.mark.parametrize("password", ["Abcdefx1", "A1" + "x" * 126, "Ünïcødé1 pässwörd"])
async def test_register_accepts_password_at_the_limits_and_unicode(client, password):
    resp = await register(client, f"ok{uuid.uuid4().hex[:6]}@example.com", password)
    assert resp.status_code == 201, resp.text


async def test_password_is_never_trimmed(client):
    assert (await register(client, "trim@example.com", "  SecurePass123  ")).status_code == 201
    wrong = await client.post(
        f"{AUTH}/login", json={"email": "trim@example.com", "password": "SecurePass123"}
    )
    assert_error(wrong, 401, "AUTHENTICATION_FAILED")
    right = await client.post(
        f"{AUTH}/login", json={"email": "trim@example.com", "password": "  SecurePass123  "}
    )
    assert right.status_code == 200


@pytest.mark.parametrize(
    "email", ["not-an-email", "a@b", "@example.com", "x" * 250 + "@example.com", ""]
)
async def test_register_invalid_email_rejected(client, email):
    body = assert_error(await register(client, email), 422, "VALIDATION_ERROR")
    assert body["errors"][0]["field"] == "body.email"


@pytest.mark.parametrize("name", ["   ", "x" * 101, "", "\u200b\u200b"])
async def test_register_invalid_display_name_rejected(client, name):
    body = assert_error(
        await register(client, "dn@example.com", display_name=name), 422, "VALIDATION_ERROR"
    )
    assert body["errors"][0]["field"] == "body.display_name"


async def test_display_name_is_trimmed(client):
    resp = await register(client, "carol@example.com", display_name="  Carol  ")
    assert (await me(client, resp.json()["access_token"])).json()["display_name"] == "Carol"


# --- login -------------------------------------------------------------------------------


async def test_login_lowercases_email(client, user: UserSession):
    resp = await client.post(
        f"{AUTH}/login", json={"email": user.email.upper(), "password": PASSWORD}
    )
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == "no-store"


async def test_login_unknown_email_and_wrong_password_answer_the_same(client, user):
    wrong = await client.post(
        f"{AUTH}/login", json={"email": user.email, "password": "WrongPass123"}
    )
    unknown = await client.post(
        f"{AUTH}/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert (
        wrong.json()
        == unknown.json()
        == {
            "detail": "Incorrect email or password.",
            "code": "AUTHENTICATION_FAILED",
        }
    )


async def test_unknown_email_still_runs_a_password_verify(app, client, monkeypatch):
    hashing = app.state.services.auth._hashing
    calls = []
    real = hashing._verify

    def spy(h, p):
        calls.append(h)
        return real(h, p)

    monkeypatch.setattr(hashing, "_verify", spy)
    await client.post(f"{AUTH}/login", json={"email": "ghost@example.com", "password": PASSWORD})
    assert len(calls) == 1 and calls[0].startswith("$argon2id$")


async def test_disabled_account_checked_after_password(app, client, user):
    async with app.state.services.sessions() as s, s.begin():
        await s.execute(update(User).where(User.email == user.email).values(is_active=False))
    right = await client.post(f"{AUTH}/login", json={"email": user.email, "password": PASSWORD})
    assert_error(right, 403, "ACCOUNT_DISABLED")
    wrong = await client.post(f"{AUTH}/login", json={"email": user.email, "password": "Nope12345"})
    assert_error(wrong, 401, "AUTHENTICATION_FAILED")
    assert_error(await me(client, user.access_token), 403, "ACCOUNT_DISABLED")
    refreshed = await client.post(f"{AUTH}/refresh", json={"refresh_token": user.refresh_token})
    assert_error(refreshed, 403, "ACCOUNT_DISABLED")


async def test_passwords_are_stored_as_argon2id(app, user):
    async with app.state.services.sessions() as s:
        stored = (await s.execute(select(User.password_hash))).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


# --- access tokens -------------------------------------------------------------------------


def forge(payload: dict, key: str, headers: dict | None = None, alg: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def test_me_without_credentials_is_unauthorized(client):
    assert_error(await client.get(f"{AUTH}/me"), 401, "UNAUTHORIZED")
    basic = await client.get(f"{AUTH}/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_error(basic, 401, "UNAUTHORIZED")


async def test_garbage_token_is_invalid(client):
    assert_error(await me(client, "garbage"), 401, "INVALID_TOKEN")


async def test_tampered_signature_is_invalid(client, user):
    head, payload, sig = user.access_token.split(".")
    flipped = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    assert_error(await me(client, f"{head}.{payload}.{flipped}"), 401, "INVALID_TOKEN")


async def test_tampered_payload_is_invalid(client, user, make_user):
    other = await make_user()
    head, _, sig = user.access_token.split(".")
    other_payload = other.access_token.split(".")[1]
    assert_error(await me(client, f"{head}.{other_payload}.{sig}"), 401, "INVALID_TOKEN")


async def test_alg_none_is_invalid(client, user):
    claims = claims_of(user.access_token)
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert_error(await me(client, f"{header}.{body}."), 401, "INVALID_TOKEN")


async def test_token_signed_with_another_key_is_invalid(client, user):
    claims = claims_of(user.access_token)
    token = forge(claims, "another-key-another-key-another-key!", {"typ": "at+jwt"})
    assert_error(await me(client, token), 401, "INVALID_TOKEN")


async def test_expired_access_token_is_invalid(client, settings, user):
    claims = claims_of(user.access_token)
    claims["iat"] = int(time.time()) - 3600
    claims["exp"] = int(time.time()) - 60
    token = forge(claims, settings.signing_key(), {"typ": "at+jwt"})
    assert_error(await me(client, token), 401, "INVALID_TOKEN")


async def test_validly_signed_forgery_controls(client, settings, user):
    """The same key and claims pass, so the refusals below are for the one change each makes."""
    claims = claims_of(user.access_token)
    key = settings.signing_key()
    assert (await me(client, forge(claims, key, {"typ": "at+jwt"}))).status_code == 200
    for change in (
        {"type": "refresh"},
        {"aud": "alice:refresh"},
        {"iss": "someone-else"},
        {"ver": claims["ver"] + 1},
        {"ver": "0"},
        {"sub": str(uuid.uuid4())},
        {"sub": "not-a-uuid"},
    ):
        token = forge({**claims, **change}, key, {"typ": "at+jwt"})
        assert_error(await me(client, token), 401, "INVALID_TOKEN")
    for missing in ("exp", "ver", "jti", "sub"):
        token = forge({k: v for k, v in claims.items() if k != missing}, key, {"typ": "at+jwt"})
        assert_error(await me(client, token), 401, "INVALID_TOKEN")
    wrong_typ = forge(claims, key, {"typ": "rt+jwt"})
    assert_error(await me(client, wrong_typ), 401, "INVALID_TOKEN")
    hs512 = forge(claims, key + key, {"typ": "at+jwt"}, alg="HS512")
    assert_error(await me(client, hs512), 401, "INVALID_TOKEN")


async def test_refresh_token_used_as_access_is_invalid(client, user):
    assert_error(await me(client, user.refresh_token), 401, "INVALID_TOKEN")


async def test_access_token_used_as_refresh_is_invalid(client, user):
    resp = await client.post(f"{AUTH}/refresh", json={"refresh_token": user.access_token})
    assert_error(resp, 401, "INVALID_TOKEN")


async def test_access_claims_are_as_specified(user):
    claims = claims_of(user.access_token)
    assert claims["type"] == "access" and claims["exp"] - claims["iat"] == 900
    assert {"sub", "iat", "exp", "jti", "ver"} <= set(claims)
    assert jwt.get_unverified_header(user.access_token)["alg"] == "HS256"
    refresh = claims_of(user.refresh_token)
    assert refresh["type"] == "refresh" and refresh["exp"] - refresh["iat"] == 7 * 86400
    assert {"jti", "fam"} <= set(refresh) and refresh["jti"] != claims["jti"]


# --- refresh rotation ----------------------------------------------------------------------


async def refresh(client, token: str) -> httpx.Response:
    return await client.post(f"{AUTH}/refresh", json={"refresh_token": token})


async def test_refresh_rotates_and_old_token_is_refused(client, user):
    resp = await refresh(client, user.refresh_token)
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    new = resp.json()
    assert new["refresh_token"] != user.refresh_token
    assert (await me(client, new["access_token"])).status_code == 200
    assert_error(await refresh(client, user.refresh_token), 401, "INVALID_TOKEN")
    assert claims_of(new["refresh_token"])["fam"] == claims_of(user.refresh_token)["fam"]


async def test_refresh_reuse_within_grace_keeps_family(client, user):
    new = (await refresh(client, user.refresh_token)).json()
    assert_error(await refresh(client, user.refresh_token), 401, "INVALID_TOKEN")
    assert (await refresh(client, new["refresh_token"])).status_code == 200


async def test_refresh_reuse_after_grace_revokes_family(app, client, user, make_user):
    new = (await refresh(client, user.refresh_token)).json()
    other_login = await client.post(
        f"{AUTH}/login", json={"email": user.email, "password": PASSWORD}
    )
    # Move the rotation back past the grace window instead of sleeping through it.
    async with app.state.services.sessions() as s, s.begin():
        await s.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == hash_token(user.refresh_token))
            .values(rotated_at=utcnow() - timedelta(seconds=11))
        )
    assert_error(await refresh(client, user.refresh_token), 401, "INVALID_TOKEN")
    assert_error(await refresh(client, new["refresh_token"]), 401, "INVALID_TOKEN")
    # Another login is another family, untouched.
    assert (await refresh(client, other_login.json()["refresh_token"])).status_code == 200


async def test_refresh_unknown_or_garbage_is_invalid(client, settings, user):
    assert_error(await refresh(client, "garbage"), 401, "INVALID_TOKEN")
    claims = claims_of(user.refresh_token)
    claims["jti"] = str(uuid.uuid4())
    unknown = forge(claims, settings.signing_key(), {"typ": "rt+jwt"})
    assert_error(await refresh(client, unknown), 401, "INVALID_TOKEN")
    # The real one still works: a refused unknown token touches no family.
    assert (await refresh(client, user.refresh_token)).status_code == 200


async def test_refresh_stores_only_a_sha256_hash(app, user):
    async with app.state.services.sessions() as s:
        rows = (await s.execute(select(RefreshToken))).scalars().all()
    assert [r.token_hash for r in rows] == [hash_token(user.refresh_token)]


async def test_family_ends_at_session_max_however_often_it_rotates(app, client, user):
    async with app.state.services.sessions() as s:
        first = (await s.execute(select(RefreshToken))).scalar_one()
    assert first.family_expires_at - first.created_at == timedelta(days=30)
    token = user.refresh_token
    for _ in range(3):
        token = (await refresh(client, token)).json()["refresh_token"]
    async with app.state.services.sessions() as s:
        rows = (await s.execute(select(RefreshToken))).scalars().all()
    assert {r.family_expires_at for r in rows} == {first.family_expires_at}
    # Once the family's end has passed, the newest token is refused.
    async with app.state.services.sessions() as s, s.begin():
        await s.execute(
            update(RefreshToken).values(
                family_expires_at=utcnow() - timedelta(seconds=1),
                expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    assert_error(await refresh(client, token), 401, "INVALID_TOKEN")


async def test_refresh_expiry_is_capped_by_the_family_end(make_settings, backend):
    from alice.core.security import TokenCodec

    codec = TokenCodec(make_settings())
    now = utcnow()
    issued = codec.make_refresh(uuid.uuid4(), uuid.uuid4(), now, now + timedelta(days=2))
    assert issued.expires_at == now + timedelta(days=2)


async def test_twenty_concurrent_refreshes_exactly_one_succeeds(app, user):
    # From twenty addresses, so that the 10/min limit per IP is not what refuses them.
    clients = [client_for(app, ip=f"10.0.0.{i}") for i in range(20)]
    results = await asyncio.gather(*(refresh(c, user.refresh_token) for c in clients))
    for c in clients:
        await c.aclose()
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] + [401] * 19, statuses


# --- logout ----------------------------------------------------------------------------------


async def test_logout_refuses_old_access_and_refresh_tokens(client, user):
    second = (
        await client.post(f"{AUTH}/login", json={"email": user.email, "password": PASSWORD})
    ).json()
    resp = await client.post(f"{AUTH}/logout", headers=user.headers)
    assert resp.status_code == 204
    assert_error(await me(client, user.access_token), 401, "INVALID_TOKEN")
    assert_error(await me(client, second["access_token"]), 401, "INVALID_TOKEN")
    assert_error(await refresh(client, user.refresh_token), 401, "INVALID_TOKEN")
    assert_error(await refresh(client, second["refresh_token"]), 401, "INVALID_TOKEN")
    again = await client.post(f"{AUTH}/login", json={"email": user.email, "password": PASSWORD})
    assert (await me(client, again.json()["access_token"])).status_code == 200


async def test_logout_requires_a_token(client):
    assert_error(await client.post(f"{AUTH}/logout"), 401, "UNAUTHORIZED")


async def test_deleted_user_token_is_invalid(app, client, user):
    async with app.state.services.sessions() as s, s.begin():
        await s.execute(User.__table__.delete())
    assert_error(await me(client, user.access_token), 401, "INVALID_TOKEN")


# --- rate limits -------------------------------------------------------------------------------


async def test_sixth_login_in_a_minute_is_429_and_failures_count(client, user):
    for i in range(5):
        resp = await client.post(
            f"{AUTH}/login", json={"email": user.email, "password": "WrongPass1"}
        )
        assert resp.status_code == 401
        assert resp.headers["x-ratelimit-limit"] == "5"
        assert resp.headers["x-ratelimit-remaining"] == str(4 - i)
        assert int(resp.headers["x-ratelimit-reset"]) >= int(time.time())
    resp = await client.post(f"{AUTH}/login", json={"email": user.email, "password": PASSWORD})
    assert_error(resp, 429, "RATE_LIMIT_EXCEEDED")
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert resp.headers["x-ratelimit-remaining"] == "0"


async def test_limits_are_per_client_ip(app, client, user):
    for _ in range(5):
        await client.post(f"{AUTH}/login", json={"email": user.email, "password": "x"})
    async with client_for(app, ip="10.1.2.3") as other:
        resp = await other.post(f"{AUTH}/login", json={"email": user.email, "password": PASSWORD})
    assert resp.status_code == 200


async def test_forged_forwarded_for_is_ignored_from_untrusted_peer(client, user):
    for i in range(5):
        await client.post(
            f"{AUTH}/login",
            json={"email": user.email, "password": "x"},
            headers={"X-Forwarded-For": f"203.0.113.{i}"},
        )
    resp = await client.post(
        f"{AUTH}/login",
        json={"email": user.email, "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.99"},
    )
    assert_error(resp, 429, "RATE_LIMIT_EXCEEDED")


async def test_forwarded_for_counts_from_a_trusted_proxy(make_settings, backend, settings):
    from asgi_lifespan import LifespanManager

    from alice.main import create_app

    app = create_app(make_settings(forwarded_allow_ips="127.0.0.1"))
    async with LifespanManager(app), client_for(app) as client:
        for _ in range(5):
            resp = await client.post(
                f"{AUTH}/login",
                json={"email": "a@example.com", "password": "x"},
                headers={"X-Forwarded-For": "198.51.100.7"},
            )
            assert resp.status_code == 401
        blocked = await client.post(
            f"{AUTH}/login",
            json={"email": "a@example.com", "password": "x"},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
        assert blocked.status_code == 429
        other = await client.post(
            f"{AUTH}/login",
            json={"email": "a@example.com", "password": "x"},
            headers={"X-Forwarded-For": "198.51.100.8"},
        )
        assert other.status_code == 401


async def test_me_limit_is_per_user(client, user, make_user):
    for _ in range(60):
        assert (await me(client, user.access_token)).status_code == 200
    assert_error(await me(client, user.access_token), 429, "RATE_LIMIT_EXCEEDED")
    other = await make_user()
    assert (await me(client, other.access_token)).status_code == 200


async def test_rate_limit_disabled_setting(make_settings, backend, settings):
    from asgi_lifespan import LifespanManager

    from alice.main import create_app

    app = create_app(make_settings(rate_limit_enabled=False))
    async with LifespanManager(app), client_for(app) as client:
        for _ in range(8):
            resp = await client.post(
                f"{AUTH}/login", json={"email": "a@example.com", "password": "x"}
            )
            assert resp.status_code == 401
            assert "x-ratelimit-limit" not in resp.headers


async def test_remembered_access_token_is_refused_once_it_expires(client, settings, user):
    """Verified tokens are remembered for speed; the memory must end at the token's `exp`."""
    claims = claims_of(user.access_token)
    claims["exp"] = int(time.time()) + 1
    token = forge(claims, settings.signing_key(), {"typ": "at+jwt"})
    assert (await me(client, token)).status_code == 200  # verified, and now remembered
    while time.time() <= claims["exp"]:
        await asyncio.sleep(0.05)
    assert_error(await me(client, token), 401, "INVALID_TOKEN")
