"""SPEC section 13: the forgotten password. Mail through a real SMTP server (aiosmtpd) with
STARTTLS and implicit TLS, the development outbox, tokens that work once and expire, and no
way to tell a known e-mail from an unknown one by body or by time."""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import statistics
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from alice.core.security import utcnow
from alice.models import PasswordReset
from tests.conftest import PASSWORD, assert_error, bearer, client_for, serve
from tests.mailkit import make_certificate, reset_token, smtp_server

AUTH = "/api/v1/auth"
NEW_PASSWORD = "Fresh-Start-2026"
PUBLIC_URL = "https://alice.example.org"


def outbox(settings) -> list[Path]:
    folder = Path(settings.mail_outbox)
    return (
        sorted(folder.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns) if folder.exists() else []
    )


def read_mail(path: Path):
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


@pytest.fixture
async def mail_app(make_settings, settings, tmp_path):
    """The app writing e-mails to an outbox (development without SMTP)."""
    s = make_settings(public_url=PUBLIC_URL + "/")
    from asgi_lifespan import LifespanManager

    from alice.main import create_app

    application = create_app(s)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=60):
        yield application, s


async def forgot(c: httpx.AsyncClient, email_address: str) -> httpx.Response:
    return await c.post(f"{AUTH}/password/forgot", json={"email": email_address})


async def reset(c: httpx.AsyncClient, token: str, password: str = NEW_PASSWORD) -> httpx.Response:
    return await c.post(f"{AUTH}/password/reset", json={"token": token, "new_password": password})


async def mailed_token(app, s, c, address: str) -> str:
    before = set(outbox(s))
    assert (await forgot(c, address)).status_code == 202
    await app.state.services.recovery.drain()
    new = [p for p in outbox(s) if p not in before]
    assert len(new) == 1
    return reset_token(read_mail(new[0]))[1]


# --- the outbox, the link, the token ----------------------------------------------------------


async def test_forgot_mails_a_link_that_resets_the_password_and_ends_sessions(mail_app):
    app, s = mail_app
    user = await app.state.services.auth.register(
        f"reset-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
    )
    async with client_for(app) as c:
        address = (await c.get(f"{AUTH}/me", headers=bearer(user.access_token))).json()["email"]
        resp = await forgot(c, address.upper())  # compared case-insensitively
        assert resp.status_code == 202
        await app.state.services.recovery.drain()
        [path] = outbox(s)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        message = read_mail(path)
        assert message["To"] == address
        assert message["From"] == s.mail_from
        assert message.get_content_type() == "multipart/alternative"
        link, token, html = reset_token(message)
        assert link == f"{PUBLIC_URL}/#reset={token}"
        assert f'href="{link}"' in html
        assert len(token) >= 43  # 32 random bytes, URL-safe base64
        # Follow the link: the page posts the token with a new password.
        done = await reset(c, token)
        assert done.status_code == 200, done.text
        assert done.headers["cache-control"] == "no-store"
        fresh = done.json()
        assert (await c.get(f"{AUTH}/me", headers=bearer(fresh["access_token"]))).status_code == 200
        # Every earlier session ended; only the new password logs in.
        assert_error(
            await c.get(f"{AUTH}/me", headers=bearer(user.access_token)), 401, "INVALID_TOKEN"
        )
        refreshed = await c.post(f"{AUTH}/refresh", json={"refresh_token": user.refresh_token})
        assert_error(refreshed, 401, "INVALID_TOKEN")
        sessions = (await c.get(f"{AUTH}/sessions", headers=bearer(fresh["access_token"]))).json()
        assert [x["current"] for x in sessions["items"]] == [True]
        old = await c.post(f"{AUTH}/login", json={"email": address, "password": PASSWORD})
        assert_error(old, 401, "AUTHENTICATION_FAILED")
        new = await c.post(f"{AUTH}/login", json={"email": address, "password": NEW_PASSWORD})
        assert new.status_code == 200
        # The token worked once.
        assert_error(await reset(c, token, "Another-Pass-789"), 401, "INVALID_TOKEN")


async def test_forgot_answers_alike_for_unknown_email_and_sends_nothing(mail_app, make_user):
    app, s = mail_app
    known = await make_user()
    async with client_for(app) as c:
        a = await forgot(c, known.email)
        b = await forgot(c, f"nobody-{uuid.uuid4().hex[:8]}@example.com")
        await app.state.services.recovery.drain()
    assert (a.status_code, a.json()) == (b.status_code, b.json()) == (202, a.json())
    assert set(a.headers) - {"x-request-id", "x-ratelimit-remaining"} == set(b.headers) - {
        "x-request-id",
        "x-ratelimit-remaining",
    }
    assert len(outbox(s)) == 1


async def test_only_the_hash_of_the_token_is_stored(mail_app, make_user):
    app, s = mail_app
    user = await make_user()
    async with client_for(app) as c:
        token = await mailed_token(app, s, c, user.email)
    async with app.state.services.sessions() as session:
        rows = (await session.execute(select(PasswordReset))).scalars().all()
    assert [r.token_hash for r in rows] == [hashlib.sha256(token.encode()).digest()]


async def test_a_newer_token_replaces_an_older(mail_app, make_user):
    app, s = mail_app
    user = await make_user()
    async with client_for(app) as c:
        first = await mailed_token(app, s, c, user.email)
        second = await mailed_token(app, s, c, user.email)
        assert first != second
        assert_error(await reset(c, first), 401, "INVALID_TOKEN")
        assert (await reset(c, second)).status_code == 200


async def test_token_expires_after_its_minutes(mail_app, make_user):
    app, s = mail_app
    recovery = app.state.services.recovery
    user = await make_user()
    async with client_for(app) as c:
        token = await mailed_token(app, s, c, user.email)
        issued = utcnow()
        recovery.clock = lambda: issued + timedelta(minutes=30, seconds=1)
        assert_error(await reset(c, token), 401, "INVALID_TOKEN")
        recovery.clock = lambda: issued + timedelta(minutes=29)
        assert (await reset(c, token)).status_code == 200


async def test_a_password_the_rules_refuse_leaves_the_token_usable(mail_app, make_user):
    app, s = mail_app
    user = await make_user(email=f"local{uuid.uuid4().hex[:6]}9@example.com")
    local_part = user.email.split("@")[0].upper()  # an upper-case letter and a digit
    async with client_for(app) as c:
        token = await mailed_token(app, s, c, user.email)
        for bad in ("Password123", local_part, "short"):
            assert_error(await reset(c, token, bad), 422, "VALIDATION_ERROR", "body.new_password")
        assert (await reset(c, token)).status_code == 200


async def test_any_password_change_forgets_the_reset_token(mail_app, make_user):
    app, s = mail_app
    user = await make_user()
    async with client_for(app) as c:
        token = await mailed_token(app, s, c, user.email)
        changed = await c.post(
            f"{AUTH}/password",
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers=user.headers,
        )
        assert changed.status_code == 200
        assert_error(await reset(c, token, "Another-Pass-789"), 401, "INVALID_TOKEN")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"token": "", "new_password": NEW_PASSWORD},
        {"token": "x" * 513, "new_password": NEW_PASSWORD},
        {"token": 12, "new_password": NEW_PASSWORD},
        {"token": "abc", "new_password": None},
    ],
)
async def test_reset_bad_bodies_are_422(client, body):
    resp = await client.post(f"{AUTH}/password/reset", json=body)
    assert_error(resp, 422, "VALIDATION_ERROR")


async def test_reset_with_unknown_or_forged_token_is_401(client):
    for token in ("unknown-token", "A" * 43, "\u00e9" * 10):
        assert_error(await reset(client, token), 401, "INVALID_TOKEN")


@pytest.mark.parametrize("address", ["", "not-an-email", "a@b", "x" * 250 + "@example.com"])
async def test_forgot_bad_email_is_422(client, address):
    assert_error(await forgot(client, address), 422, "VALIDATION_ERROR", "body.email")


async def test_forgot_is_limited_per_client_ip(client):
    for _ in range(5):
        assert (await forgot(client, "someone@example.com")).status_code == 202
    resp = await forgot(client, "someone@example.com")
    assert_error(resp, 429, "RATE_LIMIT_EXCEEDED")


async def test_reset_is_limited_per_client_ip(client):
    for _ in range(5):
        assert_error(await reset(client, "nope"), 401, "INVALID_TOKEN")
    assert_error(await reset(client, "nope"), 429, "RATE_LIMIT_EXCEEDED")


async def test_production_without_smtp_is_503_for_every_email(make_settings, settings, make_user):
    from asgi_lifespan import LifespanManager

    from alice.main import create_app

    s = make_settings(env="production")
    application = create_app(s)
    async with LifespanManager(application), client_for(application) as c:
        user = await application.state.services.auth.register(
            f"prod-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
        )
        me = await c.get(f"{AUTH}/me", headers=bearer(user.access_token))
        a = await forgot(c, me.json()["email"])
        b = await forgot(c, "nobody@example.com")
    assert_error(a, 503, "MAIL_UNAVAILABLE")
    assert a.json() == b.json() and b.status_code == 503


# --- real SMTP ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["starttls", "implicit-tls"])
async def test_reset_mail_over_real_smtp_with_tls(
    make_settings, settings, certificate, monkeypatch, implicit_tls
):
    from asgi_lifespan import LifespanManager

    from alice.main import create_app

    # The test's own CA: OpenSSL reads SSL_CERT_FILE when the client builds its context.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))
    async with smtp_server(certificate, implicit_tls=implicit_tls) as (inbox, port):
        scheme = "smtps" if implicit_tls else "smtp"
        s = make_settings(
            smtp_url=SecretStr(f"{scheme}://mailer:p%40ss%20word@127.0.0.1:{port}"),
            public_url=PUBLIC_URL,
        )
        application = create_app(s)
        async with LifespanManager(application), client_for(application) as c:
            user = await application.state.services.auth.register(
                f"smtp-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
            )
            address = (await c.get(f"{AUTH}/me", headers=bearer(user.access_token))).json()["email"]
            assert (await forgot(c, address)).status_code == 202
            message, info = await inbox.next()
            assert info == {"tls": True, "rcpt_tos": [address], "authenticated": True}
            assert inbox.logins == [("mailer", "p@ss word")]
            link, token, _html = reset_token(message)
            assert link.startswith(f"{PUBLIC_URL}/#reset=")
            assert (await reset(c, token)).status_code == 200
            metrics = (await c.get("/metrics")).text
    assert 'alice_mail_total{kind="password_reset",outcome="sent"} 1.0' in metrics


async def test_starttls_is_required_not_optional(make_settings, settings, caplog):
    """A server that does not offer STARTTLS (or a man in the middle who strips it) gets
    no mail and no password: the send fails and is logged and counted."""
    import asyncio

    from aiosmtpd.smtp import SMTP
    from asgi_lifespan import LifespanManager

    from alice.main import create_app
    from tests.mailkit import Inbox

    inbox = Inbox()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(inbox), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    caplog.set_level(logging.INFO)
    try:
        s = make_settings(smtp_url=SecretStr(f"smtp://mailer:secret@127.0.0.1:{port}"))
        application = create_app(s)
        async with LifespanManager(application), client_for(application) as c:
            user = await application.state.services.auth.register(
                f"plain-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
            )
            address = (await c.get(f"{AUTH}/me", headers=bearer(user.access_token))).json()["email"]
            assert (await forgot(c, address)).status_code == 202
            await application.state.services.recovery.drain()
            metrics = (await c.get("/metrics")).text
    finally:
        server.close()
    assert inbox.messages.empty()
    assert 'alice_mail_total{kind="password_reset",outcome="failed"} 1.0' in metrics
    assert any("e-mail not sent" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("failure", ["down", "slow"])
async def test_smtp_down_or_slow_never_blocks_the_answer_and_is_logged(
    make_settings, settings, caplog, failure
):
    import asyncio
    import socket

    from asgi_lifespan import LifespanManager

    from alice.main import create_app

    caplog.set_level(logging.DEBUG)
    if failure == "down":
        with socket.socket() as sock:  # a port with nobody listening
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = None
    else:  # accepts, then never says a word
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    try:
        s = make_settings(smtp_url=SecretStr(f"smtp://127.0.0.1:{port}"), smtp_timeout_seconds=1.0)
        application = create_app(s)
        async with LifespanManager(application), client_for(application) as c:
            user = await application.state.services.auth.register(
                f"down-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
            )
            address = (await c.get(f"{AUTH}/me", headers=bearer(user.access_token))).json()["email"]
            started = time.perf_counter()
            resp = await forgot(c, address)
            answered = time.perf_counter() - started
            assert resp.status_code == 202
            assert answered < 0.5  # the answer never waits for SMTP (timeout: 1 s)
            await application.state.services.recovery.drain()
            metrics = (await c.get("/metrics")).text
    finally:
        if server is not None:
            server.close()
    assert 'alice_mail_total{kind="password_reset",outcome="failed"} 1.0' in metrics
    failures = [r.getMessage() for r in caplog.records if "e-mail not sent" in r.getMessage()]
    assert len(failures) == 1
    if failure == "slow":
        assert "timeout" in failures[0]
    async with application.state.services.sessions() as session:
        stored = (await session.execute(select(PasswordReset.token_hash))).scalars().all()
    assert len(stored) == 1
    text = caplog.text + "\n".join(repr(vars(r)) for r in caplog.records)
    assert "#reset=" not in text


# --- no enumeration by time -----------------------------------------------------------------


async def test_forgot_takes_the_same_time_for_known_and_unknown_emails(make_settings, settings):
    """Medians of alternating requests within 20 %, through a real socket. The work for a
    known e-mail (lookup, token, outbox file) runs after each answer: drained between
    requests, outside the timed part, so that it cannot slow the next one."""
    s = make_settings(rate_limit_enabled=False)
    async with serve(s) as (application, url):
        known = await application.state.services.auth.register(
            f"t-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
        )
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            address = (await c.get(f"{AUTH}/me", headers=bearer(known.access_token))).json()[
                "email"
            ]
            times: dict[str, list[float]] = {"known": [], "unknown": []}
            for i in range(60):
                kind = "known" if i % 2 == 0 else "unknown"
                target = address if kind == "known" else f"u{i}-{uuid.uuid4().hex[:6]}@example.com"
                started = time.perf_counter()
                resp = await forgot(c, target)
                elapsed = time.perf_counter() - started
                assert resp.status_code == 202
                await application.state.services.recovery.drain()
                if i >= 10:  # warm-up
                    times[kind].append(elapsed)
    known_median = statistics.median(times["known"])
    unknown_median = statistics.median(times["unknown"])
    assert abs(known_median - unknown_median) <= 0.2 * min(known_median, unknown_median), times
    assert len(outbox(s)) == 30


async def test_an_untrusted_certificate_gets_no_mail(make_settings, settings, certificate):
    """Certificates are verified: the self-signed one, not in the trust store, is refused."""
    from asgi_lifespan import LifespanManager

    from alice.main import create_app

    async with smtp_server(certificate, implicit_tls=True) as (inbox, port):
        s = make_settings(smtp_url=SecretStr(f"smtps://mailer:x@127.0.0.1:{port}"))
        application = create_app(s)
        async with LifespanManager(application), client_for(application) as c:
            user = await application.state.services.auth.register(
                f"mitm-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
            )
            address = (await c.get(f"{AUTH}/me", headers=bearer(user.access_token))).json()["email"]
            assert (await forgot(c, address)).status_code == 202
            await application.state.services.recovery.drain()
            metrics = (await c.get("/metrics")).text
    assert inbox.messages.empty() and inbox.logins == []
    assert 'alice_mail_total{kind="password_reset",outcome="failed"} 1.0' in metrics
