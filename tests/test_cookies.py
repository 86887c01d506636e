"""SPEC section 13: the refresh token in the `alice_refresh` cookie (for the browser page),
CORS with credentials, and no password, token, reset token or cookie value in any log line
of the new routes."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest
from asgi_lifespan import LifespanManager

from alice.main import create_app
from tests.conftest import PASSWORD, assert_error, client_for, serve
from tests.mailkit import reset_token
from tests.test_logs import assert_no_secret, record_text, slices, windows

AUTH = "/api/v1/auth"
COOKIE = {"X-Token-Transport": "cookie"}


def set_cookie_of(resp: httpx.Response) -> str:
    [header] = [v for k, v in resp.headers.multi_items() if k == "set-cookie"]
    return header


def cookie_value(resp: httpx.Response) -> str:
    return set_cookie_of(resp).split(";", 1)[0].split("=", 1)[1]


async def register_with_cookie(c: httpx.AsyncClient) -> tuple[str, httpx.Response]:
    email = f"cookie-{uuid.uuid4().hex[:8]}@example.com"
    resp = await c.post(
        f"{AUTH}/register", json={"email": email, "password": PASSWORD}, headers=COOKIE
    )
    assert resp.status_code == 201, resp.text
    return email, resp


async def test_cookie_transport_sets_a_strict_httponly_cookie_and_no_body_token(client):
    email, resp = await register_with_cookie(client)
    assert resp.json()["refresh_token"] is None
    header = set_cookie_of(resp)
    attrs = {a.strip().split("=")[0].lower(): a for a in header.split(";")}
    assert header.startswith("alice_refresh=")
    assert "httponly" in attrs and "secure" in attrs  # ALICE_ENV=test is not development
    assert attrs["samesite"].strip().lower() == "samesite=strict"
    assert attrs["path"].strip() == "Path=/api/v1/auth"
    login = await client.post(
        f"{AUTH}/login", json={"email": email, "password": PASSWORD}, headers=COOKIE
    )
    assert login.json()["refresh_token"] is None and cookie_value(login)
    # Without the header: the token in the body, no cookie, as before.
    plain = await client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD})
    assert plain.json()["refresh_token"] and "set-cookie" not in plain.headers


async def test_cookie_is_not_secure_in_development(make_settings, settings):
    app = create_app(make_settings(env="development"))
    async with LifespanManager(app), client_for(app) as c:
        _email, resp = await register_with_cookie(c)
    assert "secure" not in set_cookie_of(resp).lower()


async def test_refresh_reads_the_cookie_only_with_the_header(client):
    _email, resp = await register_with_cookie(client)
    token = cookie_value(resp)
    jar = {"alice_refresh": token}
    # Without the header the cookie is not read: the body is required, as before.
    without = await client.post(f"{AUTH}/refresh", cookies=jar)
    assert_error(without, 422, "VALIDATION_ERROR")
    without = await client.post(f"{AUTH}/refresh", json={}, cookies=jar)
    assert_error(without, 422, "VALIDATION_ERROR")
    assert without.json()["errors"][0]["field"] == "body.refresh_token"
    # With it, an empty body (as the page sends) or none at all reads the cookie.
    rotated = await client.post(f"{AUTH}/refresh", headers=COOKIE, cookies=jar, json={})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["refresh_token"] is None
    assert cookie_value(rotated) not in ("", token)
    # The rotated-away cookie is refused; the new one works.
    again = await client.post(f"{AUTH}/refresh", headers=COOKIE, cookies=jar)
    assert_error(again, 401, "INVALID_TOKEN")
    ok = await client.post(
        f"{AUTH}/refresh", headers=COOKIE, cookies={"alice_refresh": cookie_value(rotated)}
    )
    assert ok.status_code == 200


async def test_refresh_with_the_header_and_no_cookie_is_401(client):
    assert_error(await client.post(f"{AUTH}/refresh", headers=COOKIE), 401, "INVALID_TOKEN")
    forged = await client.post(
        f"{AUTH}/refresh", headers=COOKIE, cookies={"alice_refresh": "not.a.token"}
    )
    assert_error(forged, 401, "INVALID_TOKEN")


async def test_logout_by_cookie_ends_every_session_and_clears_the_cookie(client):
    _email, resp = await register_with_cookie(client)
    access, token = resp.json()["access_token"], cookie_value(resp)
    jar = {"alice_refresh": token}
    # Without the header, a cookie alone is no credential.
    assert_error(await client.post(f"{AUTH}/logout", cookies=jar), 401, "UNAUTHORIZED")
    out = await client.post(f"{AUTH}/logout", headers=COOKIE, cookies=jar)
    assert out.status_code == 204, out.text
    cleared = set_cookie_of(out).lower()
    assert cleared.startswith('alice_refresh=""') or cleared.startswith("alice_refresh=;")
    assert "max-age=0" in cleared and "path=/api/v1/auth" in cleared
    me = await client.get(f"{AUTH}/me", headers={"Authorization": f"Bearer {access}"})
    assert_error(me, 401, "INVALID_TOKEN")
    again = await client.post(f"{AUTH}/refresh", headers=COOKIE, cookies=jar)
    assert_error(again, 401, "INVALID_TOKEN")
    # A used-up cookie cannot log out again.
    assert_error(
        await client.post(f"{AUTH}/logout", headers=COOKIE, cookies=jar), 401, "INVALID_TOKEN"
    )


async def test_logout_with_bearer_and_the_header_clears_the_cookie(client):
    _email, resp = await register_with_cookie(client)
    bearer = {"Authorization": f"Bearer {resp.json()['access_token']}", **COOKIE}
    out = await client.post(f"{AUTH}/logout", headers=bearer)
    assert out.status_code == 204
    assert "max-age=0" in set_cookie_of(out).lower()


@pytest.mark.parametrize(
    "origin, allowed", [("https://app.example", True), ("https://evil.example", False)]
)
async def test_cors_gives_credentials_only_to_the_listed_origins(
    make_settings, settings, origin, allowed
):
    app = create_app(make_settings(cors_origins="https://app.example"))
    async with LifespanManager(app), client_for(app) as c:
        pre = await c.options(
            f"{AUTH}/refresh",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-token-transport",
            },
        )
        real = await c.post(f"{AUTH}/refresh", headers={"Origin": origin, **COOKIE})
    if allowed:
        assert pre.headers["access-control-allow-origin"] == origin
        assert pre.headers["access-control-allow-credentials"] == "true"
        assert "x-token-transport" in pre.headers["access-control-allow-headers"].lower()
        assert real.headers["access-control-allow-credentials"] == "true"
    else:
        assert "access-control-allow-origin" not in real.headers
        assert pre.headers.get("access-control-allow-origin") != origin


async def test_new_routes_log_no_password_token_reset_token_or_cookie(settings, caplog):
    """Every logger at DEBUG, over a real socket: the password change, the sessions, the
    forgotten password with its e-mail and reset, the cookie transport and the deletion."""
    caplog.set_level(logging.DEBUG)
    old_password, new_password, last_password = (
        "Quartz-Zebra-7391-Secret",
        "Basalt-Heron-5820-Secret",
        "Cobalt-Lynx-4417-Secret",
    )
    seen: list[str] = []
    async with serve(settings.model_copy(update={"rate_limit_enabled": False})) as (app, url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            email = f"quiet-{uuid.uuid4().hex[:8]}@example.com"
            resp = await c.post(
                f"{AUTH}/register", json={"email": email, "password": old_password}, headers=COOKIE
            )
            seen += [resp.json()["access_token"], cookie_value(resp)]
            c.cookies.clear()
            jar = {"alice_refresh": cookie_value(resp)}
            resp = await c.post(f"{AUTH}/refresh", headers=COOKIE, cookies=jar)
            seen += [resp.json()["access_token"], cookie_value(resp)]
            c.cookies.clear()
            auth = {"Authorization": f"Bearer {resp.json()['access_token']}"}
            resp = await c.post(
                f"{AUTH}/password",
                json={"current_password": old_password, "new_password": new_password},
                headers=auth,
            )
            seen += [resp.json()["access_token"], resp.json()["refresh_token"]]
            auth = {"Authorization": f"Bearer {resp.json()['access_token']}"}
            sessions = (await c.get(f"{AUTH}/sessions", headers=auth)).json()["items"]
            await c.patch(f"{AUTH}/me", json={"display_name": "Quiet"}, headers=auth)
            await c.post(f"{AUTH}/password/forgot", json={"email": email})
            await app.state.services.recovery.drain()
            [mail] = list(settings.mail_outbox.glob("*.eml"))
            import email as email_lib
            import email.policy

            token = reset_token(
                email_lib.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
            )[1]
            resp = await c.post(
                f"{AUTH}/password/reset",
                json={"token": token, "new_password": last_password},
                headers=COOKIE,
            )
            assert resp.status_code == 200, resp.text
            seen += [resp.json()["access_token"], cookie_value(resp)]
            c.cookies.clear()
            auth = {"Authorization": f"Bearer {resp.json()['access_token']}"}
            await c.get(f"{AUTH}/me/export", headers=auth)
            resp = await c.request(
                "DELETE", f"{AUTH}/me", json={"password": last_password}, headers=auth
            )
            assert resp.status_code == 204
    # The test client's own httpcore trace prints the response headers it received (the
    # Set-Cookie included): that is the client's log, not the server's.
    records = [r for r in caplog.records if not r.name.startswith("httpcore")]
    text = "\n".join(record_text(r) for r in records)
    secrets = [*windows(token), old_password, new_password, last_password]
    for t in seen:
        secrets.extend(slices(t))
    assert_no_secret(text, secrets)
    assert sessions and "#reset=" not in text
