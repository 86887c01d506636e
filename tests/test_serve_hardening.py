"""SPEC sections 8 and 11 against a real `alice serve`, on real sockets: connections that send
nothing, half a head or half a body are closed after ALICE_REQUEST_HEAD_TIMEOUT_SECONDS while
/health keeps answering; past ALICE_MAX_CONNECTIONS a connection gets 503 and is closed; no
response names the server software; a configuration error never prints a secret; the data
folder and the SQLite files are private whatever the umask; and a burst of 64 logins at the
production Argon2 cost stays within its memory bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import ALICE, Proc, free_port

SECRET = "serve-hardening-test-secret-key-of-32-bytes-or-more"


def _base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ALICE_", "ANTHROPIC_", "PROMETHEUS_"))
    }
    env.update(
        ALICE_ENV="test",
        ALICE_SECRET_KEY=SECRET,
        ALICE_ARGON2_TIME_COST="1",
        ALICE_ARGON2_MEMORY_KIB="1024",
        ALICE_ARGON2_PARALLELISM="1",
        ALICE_MOCK_TOKEN_DELAY_MS="0",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def alice_serve(tmp_path: Path, umask: int | None = None, **env: str) -> Iterator[Proc]:
    server = Proc("server", _base_env(**env), tmp_path, umask=umask)
    try:
        yield server.start().wait_ready()
    finally:
        server.stop()


async def _closed_by_server(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closed the connection (EOF or reset), failing past `limit`."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionError:
                    break
                if not chunk:
                    break
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open past {limit} s") from None
    return time.monotonic() - started


async def _health_keeps_answering(url: str, until: asyncio.Event) -> int:
    answered = 0
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        while not until.is_set():
            resp = await client.get("/health")
            assert resp.status_code == 200
            answered += 1
            await asyncio.sleep(0.1)
    return answered


# --- the head timeout -------------------------------------------------------------------------

TIMEOUT = 2.0


async def test_silent_sockets_and_half_heads_are_closed_while_health_answers(tmp_path):
    with alice_serve(tmp_path, ALICE_REQUEST_HEAD_TIMEOUT_SECONDS=str(TIMEOUT)) as server:
        conns = []
        opened = time.monotonic()
        for i in range(100):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            if i % 2:
                writer.write(b"GET /health HTTP/1.1\r\nHost: alice\r\nX-Half: ")
                await writer.drain()
            conns.append((reader, writer))
        done = asyncio.Event()
        health = asyncio.create_task(_health_keeps_answering(server.url, done))
        spent = time.monotonic() - opened
        closed = await asyncio.gather(
            *(_closed_by_server(r, TIMEOUT + 1.0 + 0.5 - spent) for r, _ in conns)
        )
        done.set()
        assert await health >= 5
        # Not before the timeout: the deadline is the setting, not something shorter.
        assert min(closed) + spent >= TIMEOUT - 0.3
        for _, w in conns:
            w.close()


async def test_a_stalled_body_is_closed_and_a_slow_one_is_not(tmp_path):
    with alice_serve(tmp_path, ALICE_REQUEST_HEAD_TIMEOUT_SECONDS=str(TIMEOUT)) as server:
        body = json.dumps({"email": "slow@example.com", "password": "Wrong1234"}).encode()
        head = (
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: alice\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        # Stalled: the head and 5 bytes, then nothing.
        r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
        w1.write(head + body[:5])
        await w1.drain()
        assert await _closed_by_server(r1, TIMEOUT + 1.0) >= TIMEOUT - 0.3

        # Slow but moving: a byte every TIMEOUT / 4, for longer than TIMEOUT in all.
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
        w2.write(head)
        await w2.drain()
        started = time.monotonic()
        for i in range(len(body)):
            w2.write(body[i : i + 1])
            await w2.drain()
            if time.monotonic() - started < TIMEOUT * 1.5:
                await asyncio.sleep(TIMEOUT / 4)
        answer = await asyncio.wait_for(r2.readuntil(b"\r\n\r\n"), 10)
        assert answer.startswith(b"HTTP/1.1 401"), answer
        w1.close()
        w2.close()


async def test_a_half_head_after_a_finished_request_is_closed(tmp_path):
    """The deadline holds for every request of a keep-alive connection, not just its first."""
    with alice_serve(tmp_path, ALICE_REQUEST_HEAD_TIMEOUT_SECONDS=str(TIMEOUT)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: alice\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)
        assert first.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /health HTTP/1.1\r\nHost: al")
        await writer.drain()
        assert await _closed_by_server(reader, TIMEOUT + 1.0) >= TIMEOUT - 0.3
        writer.close()


# --- the connection cap -------------------------------------------------------------------------


async def test_past_max_connections_a_connection_gets_503_and_health_recovers(tmp_path):
    cap = 20
    with alice_serve(
        tmp_path, ALICE_MAX_CONNECTIONS=str(cap), ALICE_REQUEST_HEAD_TIMEOUT_SECONDS="60"
    ) as server:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(cap)]
        # The next connection: answered 503 at once and closed, without waiting for a request.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        answer = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closed it
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer
        assert b"connection: close" in head.lower() and b"retry-after: 1" in head.lower()
        assert json.loads(body)["code"] == "SERVER_BUSY"
        writer.close()
        # An HTTP client sees the same 503.
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            busy = await client.get("/health")
            assert busy.status_code == 503 and busy.json()["code"] == "SERVER_BUSY"
            for _, w in held:
                w.close()
            until = time.monotonic() + 5
            while (await client.get("/health")).status_code != 200:
                assert time.monotonic() < until, "/health did not recover"
                await asyncio.sleep(0.05)


# --- what responses say -------------------------------------------------------------------------


async def test_responses_name_no_server_and_carry_the_security_headers(tmp_path):
    with alice_serve(tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            for resp in (
                await client.get("/health"),
                await client.get("/nowhere"),
                await client.get("/api/v1/auth/me"),
            ):
                assert "server" not in resp.headers, resp.headers
                assert resp.headers["x-content-type-options"] == "nosniff"
                assert resp.headers["x-frame-options"] == "DENY"
                assert resp.headers["referrer-policy"] == "no-referrer"
                assert (
                    resp.headers["content-security-policy"]
                    == "default-src 'none'; frame-ancestors 'none'"
                )
        # uvicorn's own answer to a request it cannot parse names no server either.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 400") and b"\r\nserver:" not in answer.lower()
        writer.close()


# --- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [{}, {"ALICE_PORT": "not-a-port"}, {"ALICE_ENV": "staging"}],
    ids=["short-key", "and-a-bad-port", "unknown-env"],
)
def test_a_production_config_error_names_the_setting_and_prints_no_secret(tmp_path, extra):
    short_key = "k" * 8 + "0123456789abcdefghij!?"  # 30 characters, under 32 bytes
    api_key = "sk-ant-api03-" + "Zq9" * 10 + "secretTAIL"
    env = _base_env(**{"ALICE_ENV": "production", "ALICE_SECRET_KEY": short_key, **extra})
    env["ANTHROPIC_API_KEY"] = api_key
    done = subprocess.run(
        [str(ALICE), "serve", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0
    assert "configuration error" in out
    for secret in (short_key, api_key):
        for cut in range(0, len(secret) - 7, 4):  # no 8 characters of either value
            assert secret[cut : cut + 8] not in out, out
    assert "input_value" not in out
    if not extra:
        assert "ALICE_SECRET_KEY" in out and "32 bytes" in out
    elif "ALICE_PORT" in extra:
        assert "ALICE_PORT" in out
    else:
        assert "ALICE_ENV" in out


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000])
async def test_data_folder_0700_and_sqlite_files_0600_whatever_the_umask(tmp_path, umask):
    env = _base_env()
    del env["ALICE_SECRET_KEY"]  # the development key is made in the data folder too
    server = Proc("server", env, tmp_path, umask=umask)
    server.start().wait_ready()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            resp = await client.post(
                "/api/v1/auth/register",
                json={"email": "modes@example.com", "password": "SecurePass123"},
            )
            assert resp.status_code == 201
        data = tmp_path / "data"
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode)
            for p in (data, *data.iterdir())
            if not p.name.startswith(".")
        }
        assert modes["data"] == 0o700
        for name in ("alice.db", "alice.db-wal", "alice.db-shm", "secret.key"):
            assert modes.get(name) == 0o600, modes
    finally:
        server.stop()


async def test_an_existing_world_readable_database_is_made_private(tmp_path):
    with alice_serve(tmp_path):
        pass
    data = tmp_path / "data"
    os.chmod(data, 0o755)
    os.chmod(data / "alice.db", 0o644)
    with alice_serve(tmp_path):
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "alice.db").stat().st_mode) == 0o600


# --- Argon2 memory --------------------------------------------------------------------------

MIB = 1024 * 1024


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


async def test_sixty_four_logins_at_once_stay_within_the_hashing_memory_bound(tmp_path):
    """At the production cost (64 MiB a hash) and the default of 4 hashes at once, the
    process's peak resident memory grows by at most 4 x 64 MiB (+ 64 MiB for threads and
    allocator slack) during 64 simultaneous logins from 64 addresses; /health answers
    throughout, and every login ends 200, 401, 429 or 503."""
    env = {
        "ALICE_ARGON2_TIME_COST": "3",
        "ALICE_ARGON2_MEMORY_KIB": "65536",
        "ALICE_ARGON2_PARALLELISM": "4",
        "ALICE_FORWARDED_ALLOW_IPS": "127.0.0.1",
    }
    with alice_serve(tmp_path, **env) as server:
        assert server.popen is not None
        pid = server.popen.pid
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            reg = await client.post(
                "/api/v1/auth/register",
                json={"email": "burst@example.com", "password": "SecurePass123"},
                headers={"X-Forwarded-For": "192.0.2.250"},
            )
            assert reg.status_code == 201
            baseline = _status_kib(pid, "VmRSS")
            done = asyncio.Event()
            health = asyncio.create_task(_health_keeps_answering(server.url, done))

            async def login(i: int) -> int:
                password = "SecurePass123" if i % 2 else "Wrong12345"
                resp = await client.post(
                    "/api/v1/auth/login",
                    json={"email": "burst@example.com", "password": password},
                    headers={"X-Forwarded-For": f"192.0.2.{i}"},
                )
                return resp.status_code

            statuses = await asyncio.gather(*(login(i) for i in range(64)))
            done.set()
            assert await health >= 3
        peak = _status_kib(pid, "VmHWM")
    assert set(statuses) <= {200, 401, 429, 503}, statuses
    assert {200, 401} & set(statuses)
    growth_mib = (peak - baseline) * 1024 / MIB
    assert growth_mib <= 4 * 64 + 64, f"peak grew {growth_mib:.0f} MiB over {baseline} KiB"
    print(f"64 logins: peak RSS +{growth_mib:.0f} MiB, statuses {sorted(set(statuses))}")
