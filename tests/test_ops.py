"""SPEC sections 2, 3 and 8: settings, the error shape, operations endpoints, the API docs."""

from __future__ import annotations

import logging
import os
import stat

import pytest
from asgi_lifespan import LifespanManager
from pydantic import ValidationError

from alice.core.config import Settings
from alice.main import create_app
from tests.conftest import client_for


async def test_health(client):
    resp = await client.get("/health")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


async def test_ready_reports_database(client, backend):
    resp = await client.get("/ready")
    assert resp.status_code == 200
    checks = resp.json()["checks"]
    assert checks["database"] == "ok"
    if backend == "postgres":
        assert checks["redis"] == "ok"


async def test_ready_is_503_when_the_database_is_unreachable(tmp_path):
    settings = Settings(
        env="test",
        secret_key="k" * 40,
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nothing",
        data_dir=tmp_path,
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30), client_for(app) as client:
        assert (await client.get("/health")).status_code == 200
        resp = await client.get("/ready")
        assert resp.status_code == 503
        assert resp.json()["checks"]["database"] == "unavailable"
        login = await client.post(
            "/api/v1/auth/login", json={"email": "a@example.com", "password": "x"}
        )
        assert login.status_code == 503
        assert login.json() == {
            "detail": "The database is unavailable.",
            "code": "DATABASE_UNAVAILABLE",
        }


async def test_unknown_route_and_method(client):
    resp = await client.get("/nope")
    assert resp.status_code == 404 and resp.json() == {"detail": "Not found.", "code": "NOT_FOUND"}
    resp = await client.put("/api/v1/auth/me")
    assert resp.status_code == 405 and resp.json()["code"] == "METHOD_NOT_ALLOWED"


async def test_body_over_256_kib_is_413_at_and_under_is_read(client):
    big = b'{"email": "' + b"a" * (256 * 1024) + b'"}'
    resp = await client.post(
        "/api/v1/auth/login", content=big, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413 and resp.json()["code"] == "PAYLOAD_TOO_LARGE"

    async def chunks():
        for _ in range(300):
            yield b"x" * 1024

    resp = await client.post(
        "/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413 and resp.json()["code"] == "PAYLOAD_TOO_LARGE"
    just_under = b'{"email": "a@example.com", "password": "' + b"p" * (255 * 1024) + b'"}'
    resp = await client.post(
        "/api/v1/auth/login", content=just_under, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422


async def test_malformed_json_is_422(client):
    resp = await client.post(
        "/api/v1/auth/login", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422 and resp.json()["code"] == "VALIDATION_ERROR"


async def test_validation_error_lists_fields_and_never_echoes_the_password(client):
    resp = await client.post(
        "/api/v1/auth/register", json={"email": "bad", "password": "weakpassword-secret"}
    )
    body = resp.json()
    assert resp.status_code == 422
    assert {e["field"] for e in body["errors"]} == {"body.email", "body.password"}
    assert "weakpassword-secret" not in resp.text


async def test_unexpected_error_is_500_without_details(app, client, caplog):
    async def boom() -> None:
        raise RuntimeError("SELECT secret FROM users -- leaked?")

    app.add_api_route("/boom", boom)
    with caplog.at_level(logging.ERROR):
        resp = await client.get("/boom", headers={"X-Request-ID": "req-123"})
    assert resp.status_code == 500
    assert resp.json() == {"detail": "Internal server error.", "code": "INTERNAL_ERROR"}
    assert "SELECT" not in resp.text
    assert resp.headers["x-request-id"] == "req-123"
    assert any("boom" in r.getMessage() or r.exc_info for r in caplog.records)


async def test_request_id_is_taken_when_sane_and_made_otherwise(client):
    resp = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    resp = await client.get("/health", headers={"X-Request-ID": "bad id\twith stuff" * 20})
    made = resp.headers["x-request-id"]
    assert made != "bad id\twith stuff" and len(made) == 32


def test_production_refuses_to_start_without_a_long_secret(monkeypatch):
    monkeypatch.delenv("ALICE_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="ALICE_SECRET_KEY"):
        Settings(env="production", _env_file=None)
    with pytest.raises(ValidationError, match="ALICE_SECRET_KEY"):
        Settings(env="production", secret_key="x" * 31, _env_file=None)
    assert Settings(env="production", secret_key="x" * 32, _env_file=None)


def test_development_secret_is_made_once_with_mode_0600(tmp_path):
    settings = Settings(env="development", data_dir=tmp_path / "d", _env_file=None)
    key = settings.signing_key()
    path = tmp_path / "d" / "secret.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(key) == 64
    assert Settings(env="development", data_dir=tmp_path / "d", _env_file=None).signing_key() == key


def test_production_argon2_defaults_are_the_librarys():
    from argon2 import PasswordHasher

    s = Settings(_env_file=None)
    default = PasswordHasher()
    assert (s.argon2_time_cost, s.argon2_memory_kib, s.argon2_parallelism) == (
        default.time_cost,
        default.memory_cost,
        default.parallelism,
    )


async def test_docs_and_redoc_are_served(client):
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/redoc")).status_code == 200


async def test_metrics_are_prometheus_text(client, user):
    await client.get("/api/v1/auth/me", headers=user.headers)
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    text = resp.text
    assert (
        'alice_http_requests_total{method="GET",route="/api/v1/auth/me",status="200"} 1.0' in text
    )
    for name in (
        "alice_http_request_duration_seconds_bucket",
        "alice_open_streams",
        "alice_tokens_streamed_total",
        "alice_rate_limit_refusals_total",
        "alice_generations_running",
        "alice_generations_finished_total",
        "alice_stream_reattach_total",
        "alice_generations_reaped_total",
        "alice_generation_unattended_tokens_total",
    ):
        assert name in text, name


async def test_the_served_app_settles_the_garbage_collector_and_a_plain_app_does_not(tmp_path):
    """`alice serve`'s app (alice.main.served_app) freezes what start-up built and raises the
    collector's thresholds once started; apps built by tests keep Python's defaults."""
    import gc

    from alice.main import GC_THRESHOLDS

    settings = Settings(
        env="test",
        secret_key="k" * 40,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'gc.db'}",
        data_dir=tmp_path,
    )
    before = gc.get_threshold()
    assert before != GC_THRESHOLDS
    async with LifespanManager(create_app(settings), startup_timeout=30):
        assert gc.get_threshold() == before
    try:
        async with LifespanManager(create_app(settings, settle_gc=True), startup_timeout=30):
            assert gc.get_threshold() == GC_THRESHOLDS
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
