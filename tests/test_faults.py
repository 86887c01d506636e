"""Faults, each against real servers that the test starts and stops itself (never the
machine's shared PostgreSQL and Redis): Redis going away and coming back, PostgreSQL cut off
behind a TCP proxy and restored, the AI provider falling silent after `message_start`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from alice.core.config import Settings
from alice.main import create_app
from tests.chatkit import send
from tests.conftest import (
    POSTGRES_URL,
    TEST_SETTINGS,
    _create_schema,
    _drop_schema,
    client_for,
    serve,
)

AUTH = "/api/v1/auth"
PASSWORD = "SecurePass123"
REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def timed(coro: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - started


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Await `check()` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


# --- a Redis of the test's own ----------------------------------------------------------------


class RedisServer:
    """`redis-server` on a free loopback port, no persistence; stop() and start() again on the
    same port, empty (as a Redis that restarted without its data)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


async def logins(client: httpx.AsyncClient, n: int, email: str) -> list[int]:
    statuses = []
    for _ in range(n):
        resp = await client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD})
        statuses.append(resp.status_code)
    return statuses


async def ready(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/ready")


async def test_redis_stops_requests_fail_open_and_limits_return_with_it(
    settings, redis_server, caplog
):
    redis_server.start()
    s = settings.model_copy(update={"redis_url": redis_server.url, "rate_limit_enabled": True})
    app = create_app(s)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=60):
        user = await app.state.services.auth.register("redis@example.com", PASSWORD, None)
        auth = {"Authorization": f"Bearer {user.access_token}"}
        async with client_for(app, ip="10.1.0.1") as client:
            assert (await ready(client)).json()["checks"]["redis"] == "ok"
            assert await logins(client, 6, "redis@example.com") == [200] * 5 + [429]

            redis_server.stop()
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                statuses, took = await timed(logins(client, 6, "redis@example.com"))
            # Served without limits: no 429, no 5xx, no limit headers, and quickly.
            assert statuses == [200] * 6 and took < 5
            resp = await client.get(f"{AUTH}/me", headers=auth)
            assert resp.status_code == 200 and "x-ratelimit-limit" not in resp.headers
            warnings = [r for r in caplog.records if r.name == "alice.ratelimit"]
            assert warnings and "serving without limits" in warnings[0].getMessage()
            # A reply still streams: its events are kept in process while Redis is away.
            stream, took = await timed(send(client, user.access_token, "Hello while Redis is down"))
            assert stream.names[0] == "conversation" and stream.terminal.event == "done"
            assert took < 5
            resp = await ready(client)
            assert resp.status_code == 503
            assert resp.json()["checks"] == {"database": "ok", "redis": "unavailable"}
            assert (await client.get("/health")).status_code == 200

            redis_server.start()  # back, empty
            resp = await eventually(lambda: _ready_ok(client), timeout=15)
            assert resp, "the service did not see Redis return"
            assert await logins(client, 6, "redis@example.com") == [200] * 5 + [429]
            stream = await send(client, user.access_token, "Hello again")
            assert stream.terminal.event == "done"


async def _ready_ok(client: httpx.AsyncClient) -> bool:
    return (await ready(client)).status_code == 200


async def test_service_starts_and_serves_with_redis_down_then_limits_when_it_comes(
    settings, redis_server
):
    s = settings.model_copy(update={"redis_url": redis_server.url, "rate_limit_enabled": True})
    app = create_app(s)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=60):
        async with client_for(app, ip="10.1.0.2") as client:
            assert (await client.get("/health")).status_code == 200
            resp = await ready(client)
            assert resp.status_code == 503 and resp.json()["checks"]["redis"] == "unavailable"
            resp = await client.post(
                f"{AUTH}/register", json={"email": "down@example.com", "password": PASSWORD}
            )
            assert resp.status_code == 201
            stream = await send(client, resp.json()["access_token"], "Hi with no Redis")
            assert stream.terminal.event == "done"
            redis_server.start()
            assert await eventually(lambda: _ready_ok(client), timeout=15)
            assert await logins(client, 6, "down@example.com") == [200] * 5 + [429]


async def test_redis_that_swallows_packets_costs_one_timeout_not_one_per_request(
    settings, redis_server
):
    """A partition rather than a stop: connections to Redis hang instead of being refused."""
    redis_server.start()
    proxy = TcpProxy("127.0.0.1", redis_server.port)
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    s = settings.model_copy(update={"redis_url": url, "rate_limit_enabled": True})
    app = create_app(s)
    try:
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=60):
            await app.state.services.auth.register("partition@example.com", PASSWORD, None)
            async with client_for(app, ip="10.1.0.3") as client:
                assert await logins(client, 2, "partition@example.com") == [200, 200]
                await proxy.blackhole()
                times = []
                for _ in range(12):
                    statuses, took = await timed(logins(client, 1, "partition@example.com"))
                    assert statuses == [200]
                    times.append(took)
                # At most one request per second waits for the limiter's timeout (1 s).
                assert max(times) < 1.5 and sum(times) < 3.5, times
                resp, took = await timed(ready(client))
                assert resp.status_code == 503 and resp.json()["checks"]["redis"] == "unavailable"
                assert took < 4
                await proxy.restore()
                assert await eventually(lambda: _ready_ok(client), timeout=15)
            async with client_for(app, ip="10.1.0.4") as client:
                assert await logins(client, 6, "partition@example.com") == [200] * 5 + [429]
    finally:
        await proxy.close()


# --- PostgreSQL behind a proxy that the test cuts ----------------------------------------------


class TcpProxy:
    """A TCP proxy on a loopback port in front of an upstream address.

    `cut()`: refuse new connections and reset the open ones (a database that went away).
    `blackhole()`: accept new connections but never answer, and reset the open ones (an
    address that swallows packets). `restore()`: forward again, on the same port."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.mode = "forward"
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, ...]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "blackhole":
            self._pairs.add((writer,))
            return  # held open, never answered
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            for w in pair:
                w.transport.abort()
            self._pairs.discard(pair)

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _reset_all(self) -> None:
        for pair in list(self._pairs):
            for w in pair:
                w.transport.abort()
        self._pairs.clear()

    async def cut(self) -> None:
        self.mode = "cut"
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._reset_all()

    async def blackhole(self) -> None:
        self._reset_all()
        self.mode = "blackhole"
        if self._server is None:
            await self.start()

    async def restore(self) -> None:
        self.mode = "forward"
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()


@pytest.fixture
async def pg_behind_proxy(tmp_path: Path) -> AsyncIterator[tuple[Settings, TcpProxy]]:
    """Settings for a fresh PostgreSQL schema reached through a proxy of this test's own."""
    if not POSTGRES_URL:
        pytest.skip("needs ALICE_TEST_POSTGRES_URL")
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    schema = f"faults_{uuid.uuid4().hex[:12]}"
    direct = Settings(
        **TEST_SETTINGS,
        database_url=POSTGRES_URL,
        database_schema=schema,
        data_dir=tmp_path / "data",
    )
    await _create_schema(direct)
    proxied = direct.model_copy(
        update={
            "database_url": url.set(host="127.0.0.1", port=proxy.port).render_as_string(
                hide_password=False
            ),
            "rate_limit_enabled": False,
        }
    )
    try:
        yield proxied, proxy
    finally:
        await proxy.close()
        await _drop_schema(direct)


def assert_db_unavailable(resp: httpx.Response, took: float) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json() == {"detail": "The database is unavailable.", "code": "DATABASE_UNAVAILABLE"}
    assert took < 6, f"took {took:.1f}s"


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
async def test_postgres_unreachable_is_503_quickly_and_recovers_without_restart(
    pg_behind_proxy, fault
):
    settings, proxy = pg_behind_proxy
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=60):
        async with client_for(app) as client:
            resp = await client.post(
                f"{AUTH}/register", json={"email": "pg@example.com", "password": PASSWORD}
            )
            assert resp.status_code == 201
            access = resp.json()["access_token"]
            auth = {"Authorization": f"Bearer {access}"}
            assert (await client.get(f"{AUTH}/me", headers=auth)).status_code == 200
            assert (await ready(client)).status_code == 200

            await getattr(proxy, fault)()
            login = client.post(
                f"{AUTH}/login", json={"email": "pg@example.com", "password": PASSWORD}
            )
            # Several at once, as a real load would: none may hang.
            results = await asyncio.gather(
                timed(login),
                timed(client.get(f"{AUTH}/me", headers=auth)),
                timed(client.get("/api/v1/chat/conversations", headers=auth)),
                timed(
                    client.post("/api/v1/chat/message", json={"content": "Hello?"}, headers=auth)
                ),
                timed(
                    client.post(
                        f"{AUTH}/register",
                        json={"email": "pg2@example.com", "password": PASSWORD},
                    )
                ),
                # More than the pool holds (10): the rest wait for a slot, not for ever.
                *(timed(client.get(f"{AUTH}/me", headers=auth)) for _ in range(10)),
            )
            for resp, took in results:
                assert_db_unavailable(resp, took)
            resp, took = await timed(client.get("/health"))
            assert resp.status_code == 200 and took < 1
            resp, took = await timed(ready(client))
            assert resp.status_code == 503 and took < 6
            assert resp.json()["checks"] == {"database": "unavailable"}
            resp, took = await timed(client.get(f"{AUTH}/me", headers=auth))
            assert_db_unavailable(resp, took)  # again, once the pool knows

            await proxy.restore()
            recovered = await eventually(lambda: _login_ok(client, "pg@example.com"), timeout=15)
            assert recovered, "the service did not recover when the database returned"
            assert (await client.get(f"{AUTH}/me", headers=auth)).status_code == 200
            assert (await ready(client)).status_code == 200
            stream = await send(client, access, "Back again")
            assert stream.terminal.event == "done"


async def _login_ok(client: httpx.AsyncClient, email: str) -> bool:
    resp = await client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD})
    return resp.status_code == 200


# --- the AI provider falls silent ---------------------------------------------------------------


async def test_provider_silent_after_message_start_ends_with_ai_error_and_leaves_no_row(
    settings, ai_settings, fake_anthropic
):
    s = settings.model_copy(update={**ai_settings, "ai_timeout_seconds": 0.5})
    async with serve(s) as (app, url):
        user = await app.state.services.auth.register("hang@example.com", PASSWORD, None)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            stream, took = await timed(send(client, user.access_token, "[[hang]]"))
            assert stream.names == ["conversation", "error"]
            assert json.loads(stream.terminal.data)["code"] == "AI_SERVICE_UNAVAILABLE"
            assert took < 5
            cid = stream.conversation_id
            page = await client.get(
                f"/api/v1/chat/conversations/{cid}/messages",
                headers={"Authorization": f"Bearer {user.access_token}"},
            )
            # The user's message stays; the empty reply is gone.
            assert [m["role"] for m in page.json()["items"]] == ["user"]
            # The request to the provider was closed, not left hanging.
            record = fake_anthropic.requests_with("[[hang]]")[-1]
            assert await fake_anthropic.until(lambda: record.finished, 5)
            assert record.disconnected
            # Nothing is left running: the conversation takes the next message (no 409).
            again = await send(client, user.access_token, "and now?", cid)
            assert again.status == 200 and again.names[0] == "conversation"
