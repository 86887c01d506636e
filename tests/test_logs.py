"""SPEC section 8, logs and metrics: every log line of a whole session, in process at DEBUG
and from a real `alice serve` writing JSON, and /metrics summed over several workers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from tests.chatkit import CHAT, send
from tests.conftest import serve

AUTH = "/api/v1/auth"
ROOT = Path(__file__).resolve().parent.parent
ALICE = Path(sys.executable).parent / "alice"

# Recognisable secrets: none of them, nor a distinctive slice of one, may reach a log line.
SECRET_PASSWORD = "Quartz-Zebra-7391-Secret"
API_KEY = "sk-ant-api03-ALICEtestKEY-" + "Zq9Xw" * 8
MESSAGES_ROUTE = "/api/v1/chat/conversations/{conversation_id}/messages"


def windows(text: str, size: int = 16) -> list[str]:
    """Every run of `size` characters of `text`: a slice of a secret is a leak too."""
    return [text[i : i + size] for i in range(len(text) - size + 1)]


def slices(token: str) -> list[str]:
    """A JWT and every distinctive slice of it: of its payload and of its signature (the
    header is the same for every token, so it identifies none)."""
    parts = token.split(".")
    assert len(parts) == 3, token
    return [token, *windows(parts[1]), *windows(parts[2])]


def secrets_of(tokens: list[str]) -> list[str]:
    out = [SECRET_PASSWORD, *windows(API_KEY[len("sk-ant-api03-") :])]
    for token in tokens:
        out.extend(slices(token))
    return out


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        at = text.find(secret)
        if at >= 0:
            context = text[max(at - 200, 0) : at + 60]
            raise AssertionError(f"a secret ({secret[:6]}…) reached the logs:\n{context}")


async def run_session(base_url: str, fake_marker: str = "") -> dict[str, Any]:
    """Register, login, me, refresh, a chat message with its stream (and one the provider
    refuses), a page of messages, logout: each request with an X-Request-ID of its own.
    Returns the request ids (name -> id), the tokens seen and the user id."""
    rid = {
        name: f"{name}-{uuid.uuid4().hex[:12]}"
        for name in (
            "register",
            "login",
            "me",
            "refresh",
            "message",
            "failed",
            "messages",
            "logout",
        )
    }
    email = f"logs-{uuid.uuid4().hex[:8]}@example.com"
    tokens: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        def h(name: str, access: str | None = None) -> dict[str, str]:
            out = {"X-Request-ID": rid[name]}
            if access:
                out["Authorization"] = f"Bearer {access}"
            return out

        resp = await client.post(
            f"{AUTH}/register",
            json={"email": email, "password": SECRET_PASSWORD, "display_name": "Logs"},
            headers=h("register"),
        )
        assert resp.status_code == 201, resp.text
        tokens += [resp.json()["access_token"], resp.json()["refresh_token"]]
        resp = await client.post(
            f"{AUTH}/login", json={"email": email, "password": SECRET_PASSWORD}, headers=h("login")
        )
        assert resp.status_code == 200 and resp.headers["x-request-id"] == rid["login"]
        access, refresh = resp.json()["access_token"], resp.json()["refresh_token"]
        tokens += [access, refresh]
        me = await client.get(f"{AUTH}/me", headers=h("me", access))
        assert me.status_code == 200
        user_id = me.json()["id"]
        resp = await client.post(
            f"{AUTH}/refresh", json={"refresh_token": refresh}, headers=h("refresh")
        )
        assert resp.status_code == 200
        access = resp.json()["access_token"]
        tokens += [access, resp.json()["refresh_token"]]
        stream = await send(
            client,
            access,
            f"Hello {fake_marker}[[tokens:4]]",
            extra_headers={"X-Request-ID": rid["message"]},
        )
        assert stream.names == ["conversation"] + ["token"] * 4 + ["done"]
        assert stream.headers["x-request-id"] == rid["message"]
        failed = await send(
            client,
            access,
            "[[status:401]] the provider refuses the key",
            stream.conversation_id,
            extra_headers={"X-Request-ID": rid["failed"]},
        )
        assert failed.terminal.event == "error"
        resp = await client.get(
            f"{CHAT}/conversations/{stream.conversation_id}/messages", headers=h("messages", access)
        )
        assert resp.status_code == 200
        resp = await client.post(f"{AUTH}/logout", headers=h("logout", access))
        assert resp.status_code == 204
    return {"rid": rid, "tokens": tokens, "user_id": user_id, "email": email}


EXPECTED_ACCESS = {
    # name: (method, route, status, authenticated)
    "register": ("POST", "/api/v1/auth/register", 201, False),
    "login": ("POST", "/api/v1/auth/login", 200, False),
    "me": ("GET", "/api/v1/auth/me", 200, True),
    "refresh": ("POST", "/api/v1/auth/refresh", 200, False),
    "message": ("POST", "/api/v1/chat/message", 200, True),
    "failed": ("POST", "/api/v1/chat/message", 200, True),
    "messages": ("GET", MESSAGES_ROUTE, 200, True),
    "logout": ("POST", "/api/v1/auth/logout", 204, True),
}


def record_text(record: logging.LogRecord) -> str:
    """Everything a handler could write of a record: message, arguments, extras, traceback."""
    formatter = logging.Formatter()
    parts = [record.getMessage(), repr(record.msg), repr(record.args)]
    parts.append(repr({k: v for k, v in vars(record).items() if k not in {"exc_info"}}))
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


async def test_a_whole_session_logs_no_secret_and_one_access_line_per_request(
    settings, ai_settings, caplog
):
    caplog.set_level(logging.DEBUG)  # every logger, every level: SDK, httpx, uvicorn, ours
    s = settings.model_copy(update={**ai_settings, "anthropic_api_key": SecretStr(API_KEY)})
    async with serve(s) as (_app, url):
        session = await run_session(url)
        rid = session["rid"]

        def access_records() -> dict[str, list[logging.LogRecord]]:
            found: dict[str, list[logging.LogRecord]] = {name: [] for name in rid}
            by_id = {v: k for k, v in rid.items()}
            for r in caplog.records:
                if r.name == "alice.access" and getattr(r, "request_id", None) in by_id:
                    found[by_id[r.request_id]].append(r)
            return found

        # A stream's access line is written when its response has ended.
        deadline = time.monotonic() + 5
        while not all(access_records().values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    records = list(caplog.records)
    assert len(records) > 50  # DEBUG really was captured (SDK, httpx, uvicorn, ours)
    everything = "\n".join(record_text(r) for r in records) + caplog.text
    assert_no_secret(everything, secrets_of(session["tokens"]))

    found = access_records()
    for name, (method, route, status, authenticated) in EXPECTED_ACCESS.items():
        assert len(found[name]) == 1, (name, [r.getMessage() for r in found[name]])
        line = found[name][0]
        assert (line.method, line.route, line.status) == (method, route, status), name
        assert isinstance(line.duration_ms, float) and line.duration_ms >= 0
        expected_user = session["user_id"] if authenticated else "-"
        assert line.user_id == expected_user, name
        message = line.getMessage()
        assert message.startswith(f"{method} {route} {status} "), message
        assert (f"user={session['user_id']}" in message) is authenticated, message

    # Lines of the app written inside a request carry that request's id.
    def ids_of(logger: str, starts: str) -> list[str]:
        return [
            r.request_id for r in records if r.name == logger and r.getMessage().startswith(starts)
        ]

    assert ids_of("alice.auth", "login user_id=") == [rid["login"]]
    assert ids_of("alice.auth", "register user_id=") == [rid["register"]]
    assert ids_of("alice.auth", "logout user_id=") == [rid["logout"]]
    assert rid["failed"] in ids_of("alice.ai", "AI provider request failed")
    # The provider's own failure is logged with its cause, the key never.
    assert any("authentication_error" in r.getMessage() for r in records if r.name == "alice.ai")


async def test_request_id_is_made_when_insane_and_is_on_the_access_line(client, caplog):
    caplog.set_level(logging.INFO)
    for bad in ("has space", "x" * 129, "semi;colon", "ünïcode"):
        resp = await client.get("/health", headers={"X-Request-ID": bad.encode("utf-8")})
        made = resp.headers["x-request-id"]
        assert made != bad and re.fullmatch(r"[0-9a-f]{32}", made)
        lines = [r for r in caplog.records if r.name == "alice.access" and r.request_id == made]
        assert len(lines) == 1 and lines[0].route == "/health" and lines[0].status == 200
    resp = await client.get("/health", headers={"X-Request-ID": "A-z.0:9_" + "x" * 120})
    assert resp.headers["x-request-id"] == "A-z.0:9_" + "x" * 120
    unmatched = await client.get("/no/such/route", headers={"X-Request-ID": "rid-unmatched"})
    assert unmatched.status_code == 404
    line = next(r for r in caplog.records if getattr(r, "request_id", "") == "rid-unmatched")
    assert line.route == "<unmatched>" and line.status == 404  # never the raw path as a label


async def test_ai_errors_are_counted_by_cause(settings, ai_settings):
    async with serve(settings.model_copy(update=ai_settings)) as (app, url):
        services = app.state.services
        user = await services.auth.register("ai-errors@example.com", "SecurePass123", None)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for marker in ("[[status:401]]", "[[status:403]]", "[[error_after:1]]"):
                stream = await send(client, user.access_token, f"{marker} fail")
                assert stream.terminal.event == "error"
            text = (await client.get("/metrics")).text
    assert sample(text, "alice_ai_errors_total", cause="authentication_error") == 1
    assert sample(text, "alice_ai_errors_total", cause="permission_error") == 1
    assert sample(text, "alice_ai_errors_total", cause="overloaded_error") == 1


# --- real processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def alice_serve(
    tmp_path: Path, *args: str, log_name: str = "server.log", **env: str
) -> Iterator[tuple[str, Path]]:
    """`alice serve` on a free port, its stderr (the logs) written to a file; yields the base
    URL and that file's path. SQLite in tmp_path unless env says otherwise."""
    port = free_port()
    data = tmp_path / "data"
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ALICE_", "ANTHROPIC_"))},
        "ALICE_DATA_DIR": str(data),
        "ALICE_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'alice.db'}",
        "ALICE_MOCK_TOKEN_DELAY_MS": "0",
        "ALICE_ARGON2_TIME_COST": "1",
        "ALICE_ARGON2_MEMORY_KIB": "1024",
        "ALICE_ARGON2_PARALLELISM": "1",
        "ALICE_SHUTDOWN_GRACE_SECONDS": "2",
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / log_name
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [str(ALICE), "serve", "--port", str(port), *args],
            cwd=tmp_path,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"alice serve did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"a log line that is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        out.append(record)
    return out


async def test_json_logs_of_a_real_server_one_object_per_line_no_secret(tmp_path, fake_anthropic):
    with alice_serve(
        tmp_path,
        ALICE_LOG_FORMAT="json",
        ANTHROPIC_API_KEY=API_KEY,
        ANTHROPIC_BASE_URL=fake_anthropic.base_url,
    ) as (url, log_path):
        session = await run_session(url)
        await asyncio.sleep(0.3)  # the last access line is written after the response
    raw = log_path.read_text()
    assert_no_secret(raw, secrets_of(session["tokens"]))
    records = json_lines(log_path)  # every line, start-up and shutdown included
    for record in records:
        assert {"time", "level", "logger", "message", "request_id", "pid"} <= set(record)
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's lines too
    rid = session["rid"]
    access = [r for r in records if r["logger"] == "alice.access"]
    for name, (method, route, status, authenticated) in EXPECTED_ACCESS.items():
        mine = [r for r in access if r["request_id"] == rid[name]]
        assert len(mine) == 1, (name, mine)
        line = mine[0]
        assert (line["method"], line["route"], line["status"]) == (method, route, status)
        assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
        assert line.get("user_id") == (session["user_id"] if authenticated else None), name
    login = [r for r in records if r["logger"] == "alice.auth" and "login user_id" in r["message"]]
    assert [r["request_id"] for r in login] == [rid["login"]]
    failed = [r for r in records if r["logger"] == "alice.ai"]
    assert failed and all(r["request_id"] == rid["failed"] for r in failed)


def scrape(url: str) -> str:
    resp = httpx.get(f"{url}/metrics", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return resp.text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not match or match.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


async def test_metrics_are_summed_over_two_workers(tmp_path):
    """Workers share one socket, so each scrape reaches any one of them: every scrape must
    count the requests that all workers served."""
    round_size = 20
    with alice_serve(tmp_path, "--workers", "2", ALICE_LOG_FORMAT="json") as (url, log_path):
        route = {"method": "GET", "route": "/health", "status": "200"}
        before = sample(scrape(url), "alice_http_requests_total", **route)

        async def one(i: int) -> None:
            # A connection per request, so that the kernel hands them to both workers.
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                resp = await client.get("/health", headers={"X-Request-ID": f"spread-{i}"})
                assert resp.status_code == 200

        # The first /health answered as soon as one worker was up; the second may still be
        # starting, and the kernel may favour one worker for a while. Send rounds until both
        # have served (each access line is written before its response goes out).
        sent, served_by = 0, set()
        deadline = time.monotonic() + 60
        while len(served_by) < 2 and time.monotonic() < deadline:
            await asyncio.gather(*(one(sent + i) for i in range(round_size)))
            sent += round_size
            served_by = {
                r["pid"] for r in json_lines(log_path) if r["request_id"].startswith("spread-")
            }
        assert len(served_by) == 2, "the requests did not reach both workers"
        requests = sent
        # A request is counted just after its response went out: wait for the last ones.
        deadline = time.monotonic() + 10
        while sample(scrape(url), "alice_http_requests_total", **route) - before < requests:
            assert time.monotonic() < deadline, "the requests were never all counted"
            await asyncio.sleep(0.05)
        scrapes = [scrape(url) for _ in range(8)]
        for text in scrapes:
            got = sample(text, "alice_http_requests_total", **route)
            assert got - before == requests, text
            count = sample(
                text, "alice_http_request_duration_seconds_count", method="GET", route="/health"
            )
            assert count - before == requests
            assert sample(text, "alice_open_streams") == 0
            assert "alice_rate_limit_refusals_total" in text
        metrics_pids = {r["pid"] for r in json_lines(log_path) if r.get("route") == "/metrics"}
        assert metrics_pids  # whichever worker answered, it reported the sum
