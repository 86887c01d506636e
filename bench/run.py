"""The benchmark run: servers up, figures measured against their baselines, table out.

Layout (2 cores): ALICE (`alice serve`, one worker) and the bare Starlette baseline
(`bench.bare`, the same uvicorn settings) are pinned to core 0 and never loaded at the same
time; the load client (`bench.client` or wrk), the fake Anthropic server
(`tests/fakes/anthropic_server.py`) and this orchestrator are pinned to core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.client import cpu_times
from bench.procs import LOAD_CORE, REPO, SERVER_CORE, Proc
from bench.stats import percentile, summary_ms

PASSWORD = "Bench-Passw0rd"
RESULTS = REPO / "bench" / "results.json"
OUT = REPO / "bench" / "out"
GROUPS = ("ttft", "http", "walk", "stall", "streams")


@dataclass(frozen=True)
class Plan:
    ttft_messages: int
    ttft_warmup: int
    http_seconds: int
    http_rounds: int
    http_warmup_seconds: int
    http_connections: int
    conversations: int
    walk_messages: int
    walk_edge_pages: int
    logins: int
    stream_levels: tuple[int, ...]
    relay_level: int
    gap_level: int
    gap_level_high: int
    stream_users: int
    stream_tokens: int
    stream_delay_ms: int


FULL = Plan(
    ttft_messages=200,
    ttft_warmup=10,
    http_seconds=10,
    http_rounds=3,
    http_warmup_seconds=2,
    http_connections=64,
    conversations=200,
    walk_messages=100_000,
    walk_edge_pages=100,
    logins=16,
    stream_levels=(100, 500, 1000, 2000),
    relay_level=1000,
    gap_level=100,
    gap_level_high=500,
    stream_users=20,
    stream_tokens=50,
    stream_delay_ms=20,
)
QUICK = Plan(
    ttft_messages=60,
    ttft_warmup=5,
    http_seconds=3,
    http_rounds=2,
    http_warmup_seconds=1,
    http_connections=64,
    conversations=200,
    walk_messages=20_000,
    walk_edge_pages=40,
    logins=16,
    stream_levels=(100, 1000),
    relay_level=1000,
    gap_level=100,
    gap_level_high=500,
    stream_users=20,
    stream_tokens=50,
    stream_delay_ms=20,
)


@dataclass
class Figure:
    key: str
    name: str
    unit: str
    value: float | None
    baseline: float | None
    baseline_label: str
    ratio: float | None
    target: str
    met: bool | None
    detail: dict[str, Any] = field(default_factory=dict)
    # The bare relay (bench/bare.py /relay), for the reply-path figures: the fair limit.
    relay: float | None = None


@dataclass
class User:
    email: str
    access: str
    refresh: str
    issued: float
    id: str = ""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the environment --------------------------------------------------------------------------


class Env:
    """The servers of one run and what they were started with."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.tmp = Path(tempfile.mkdtemp(prefix="alice-bench-"))
        self.run_id = uuid.uuid4().hex[:10]
        self.fake: Proc | None = None
        self.bare: Proc | None = None
        self.alice: Proc | None = None
        self.pg_db: str | None = None
        self.redis_prefix: str | None = None
        self.alice_port = procs.free_port()
        self.bare_port = procs.free_port()
        self.fake_port = procs.free_port()
        if args.postgres:
            self.pg_db = f"alice_bench_{self.run_id}"
            self.redis_prefix = f"alice-bench-{self.run_id}"
            self.database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.pg_db}"
        else:
            self.database_url = f"sqlite+aiosqlite:///{self.tmp / 'data' / 'alice.db'}"
        self.secret_key = secrets.token_hex(32)

    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ALICE_", "ANTHROPIC_")) and k != "PYTHONPATH"
        }
        env["PYTHONPATH"] = str(REPO)
        return env

    def alice_env(self) -> dict[str, str]:
        env = self.base_env()
        env.update(
            {
                "ALICE_DATA_DIR": str(self.tmp / "data"),
                "ALICE_DATABASE_URL": self.database_url,
                "ALICE_SECRET_KEY": self.secret_key,
                "ALICE_RATE_LIMIT_ENABLED": "false",
                "ALICE_SHUTDOWN_GRACE_SECONDS": "5",
                "ANTHROPIC_API_KEY": "bench-key",
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{self.fake_port}",
            }
        )
        # ALICE_ARGON2_* stay unset: logins cost what they cost in production.
        if self.args.postgres:
            env["ALICE_REDIS_URL"] = "redis://127.0.0.1:6379/0"
            env["ALICE_REDIS_PREFIX"] = self.redis_prefix or "alice-bench"
        return env

    def alice_argv(self) -> list[str]:
        exe = Path(sys.executable).parent / "alice"
        command = str(exe) if exe.exists() else (shutil.which("alice") or "alice")
        return [command, "serve", "--host", "127.0.0.1", "--port", str(self.alice_port)]

    def start_fake(self) -> None:
        argv = [
            sys.executable,
            str(REPO / "tests" / "fakes" / "anthropic_server.py"),
            "--port",
            str(self.fake_port),
            "--max-records",
            "200",
        ]
        self.fake = procs.start(
            "fake",
            argv,
            port=self.fake_port,
            core=LOAD_CORE,
            env=self.base_env(),
            cwd=self.tmp,
            log_dir=self.out,
            ready_path="/_fake/stats",
        )

    def start_bare(self) -> None:
        argv = [sys.executable, "-m", "bench.bare", "--port", str(self.bare_port)]
        argv += ["--upstream", f"http://127.0.0.1:{self.fake_port}"]
        self.bare = procs.start(
            "bare",
            argv,
            port=self.bare_port,
            core=SERVER_CORE,
            env=self.base_env(),
            cwd=REPO,
            log_dir=self.out,
        )

    def start_alice(self) -> None:
        (self.tmp / "data").mkdir(exist_ok=True)
        self.alice = procs.start(
            "alice",
            self.alice_argv(),
            port=self.alice_port,
            core=SERVER_CORE,
            env=self.alice_env(),
            cwd=self.tmp,  # no stray .env, no ./data of the repo
            log_dir=self.out,
        )

    def restart_alice(self) -> None:
        if self.alice:
            self.alice.stop()
        self.start_alice()

    def restart_bare(self) -> None:
        if self.bare:
            self.bare.stop()
        self.start_bare()

    def close(self) -> None:
        for proc in (self.alice, self.bare, self.fake):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        if self.pg_db:
            with contextlib.suppress(Exception):
                asyncio.run(_drop_pg(self.pg_db))
        if self.redis_prefix:
            with contextlib.suppress(Exception):
                asyncio.run(_drop_redis(self.redis_prefix))
        shutil.rmtree(self.tmp, ignore_errors=True)


async def _create_pg(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres", timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_pg(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres", timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _drop_redis(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()


# -- accounts and seeded data -----------------------------------------------------------------


def register_users(port: int, prefix: str, count: int) -> list[User]:
    """Register `count` users through the API (Argon2 at its defaults: a few per second)."""

    async def go() -> list[User]:
        sem = asyncio.Semaphore(4)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

            async def one(i: int) -> User:
                email = f"{prefix}-{i}@example.com"
                async with sem:
                    r = await client.post(
                        "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
                    )
                if r.status_code != 201:
                    raise RuntimeError(f"register {email}: {r.status_code} {r.text[:200]}")
                body = r.json()
                me = await client.get(
                    "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}
                )
                me.raise_for_status()
                return User(
                    email, body["access_token"], body["refresh_token"], time.time(), me.json()["id"]
                )

            return list(await asyncio.gather(*(one(i) for i in range(count))))

    return asyncio.run(go())


def refresh_users(port: int, users: list[User], older_than: float = 300) -> None:
    """New access tokens (POST /auth/refresh) for users whose token is getting old."""
    stale = [u for u in users if time.time() - u.issued > older_than]
    if not stale:
        return
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for u in stale:
            r = client.post("/api/v1/auth/refresh", json={"refresh_token": u.refresh})
            r.raise_for_status()
            body = r.json()
            u.access, u.refresh, u.issued = body["access_token"], body["refresh_token"], time.time()


async def _seed(database_url: str, rows: dict[str, list[dict[str, Any]]], analyze: bool) -> None:
    """Insert rows straight into the database (SQLAlchemy Core on ALICE's own tables)."""
    from sqlalchemy import insert, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from alice.models import Conversation, Message

    tables = {"conversations": Conversation.__table__, "messages": Message.__table__}
    engine = create_async_engine(database_url)
    try:
        for name in ("conversations", "messages"):
            batch = rows.get(name) or []
            for i in range(0, len(batch), 5000):
                async with engine.begin() as conn:
                    await conn.execute(insert(tables[name]), batch[i : i + 5000])
        if analyze:
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE conversations"))
                await conn.execute(text("ANALYZE messages"))
    finally:
        await engine.dispose()


def seed_conversations(env: Env, user: User, count: int) -> None:
    now = datetime.now(UTC)
    convs = []
    for i in range(count):
        at = now - timedelta(minutes=count - i)
        convs.append(
            {
                "id": uuid.uuid4(),
                "user_id": uuid.UUID(user.id),
                "title": f"Seeded conversation {i}",
                "created_at": at,
                "updated_at": at,
            }
        )
    asyncio.run(_seed(env.database_url, {"conversations": convs}, env.args.postgres))


SIDE_BRANCH_EVERY = 10  # the walked conversation has a side branch beside every 10th message
SIDE_BRANCH_LENGTH = 3


def seed_long_conversation(env: Env, user: User, count: int) -> str:
    """One conversation whose active branch holds `count` messages, with a side branch of
    SIDE_BRANCH_LENGTH messages beside every SIDE_BRANCH_EVERY-th (newer than the branch's
    own, as an edit or a regenerate leaves them): the pages must skip them at every depth."""
    conv_id = uuid.uuid4()
    start = datetime.now(UTC) - timedelta(days=30)
    conv = {
        "id": conv_id,
        "user_id": uuid.UUID(user.id),
        "title": "A very long conversation",
        "created_at": start,
        "updated_at": start + timedelta(milliseconds=count),
    }

    def message(i: int, depth: int, parent: uuid.UUID | None, at: datetime, **extra: Any) -> Any:
        return {
            "id": uuid.uuid4(),
            "conversation_id": conv_id,
            "role": "user" if depth % 2 == 0 else "assistant",
            "content": f"Message number {i}: " + "lorem ipsum dolor sit amet " * 4,
            "status": "complete",
            "token_count": 0 if depth % 2 == 0 else 30,
            "event_seq": None if depth % 2 == 0 else 32,
            "heartbeat_at": None,
            "created_at": at,
            "parent_id": parent,
            "depth": depth,
            "sibling_index": 0,
            "active_depth": depth,
            **extra,
        }

    messages: list[dict[str, Any]] = []
    side: list[dict[str, Any]] = []
    parent = None
    for i in range(count):
        at = start + timedelta(milliseconds=i)
        row = message(i, i, parent, at)
        messages.append(row)
        if i % SIDE_BRANCH_EVERY == SIDE_BRANCH_EVERY // 2:
            side_parent = parent
            for j in range(SIDE_BRANCH_LENGTH):
                side_row = message(
                    -i,
                    i + j,
                    side_parent,
                    at + timedelta(microseconds=500 + j),
                    sibling_index=1 if j == 0 else 0,
                    active_depth=None,
                )
                side.append(side_row)
                side_parent = side_row["id"]
        parent = row["id"]
    asyncio.run(
        _seed(
            env.database_url,
            {"conversations": [conv], "messages": messages + side},
            env.args.postgres,
        )
    )
    return str(conv_id)


# -- HTTP throughput: wrk, or the asyncio client ----------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk_seconds(text: str) -> float | None:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(output: str, seconds: float) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    lat: dict[str, float | None] = {}
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", output, re.M)
        v = _wrk_seconds(m.group(1)) if m else None
        lat[f"p{q}"] = round(v * 1000, 3) if v is not None else None
    requests = int(total.group(1)) if total else 0
    bad = int(non2xx.group(1)) if non2xx else 0
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    raw_rps = float(rps.group(1)) if rps else 0.0
    good_rps = raw_rps * (requests - bad) / requests if requests else 0.0
    return {
        "tool": "wrk",
        "requests": requests,
        "non_2xx": bad,
        "errors": errors,
        "rps": good_rps,
        "latency": lat,
        "seconds": seconds,
    }


def http_load(
    port: int,
    path: str,
    headers: dict[str, str],
    seconds: int,
    connections: int,
    pid: int | None,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    cpu0 = procs.cpu_seconds(pid) if pid else None
    spy = start_profile(pid, seconds, profile_to) if profile_to and pid else None
    if use_wrk():
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(f"http://127.0.0.1:{port}{path}")
        done = subprocess.run(
            procs.pinned(argv, LOAD_CORE), capture_output=True, timeout=seconds + 60, check=False
        )
        result = parse_wrk(done.stdout.decode(errors="replace"), seconds)
    else:
        job = {
            "mode": "http",
            "port": port,
            "path": path,
            "headers": headers,
            "duration": seconds,
            "connections": connections,
        }
        result = procs.run_client(job, timeout=seconds + 60)
        result["tool"] = "asyncio client"
    cpu1 = procs.cpu_seconds(pid) if pid else None
    finish_profile(spy, profile_to)
    if cpu0 is not None and cpu1 is not None and result.get("requests"):
        result["server_cpu_seconds"] = round(cpu1 - cpu0, 3)
        result["server_cpu_us_per_request"] = round((cpu1 - cpu0) / result["requests"] * 1e6, 1)
    return result


def use_wrk() -> bool:
    return shutil.which("wrk") is not None and not os.environ.get("BENCH_NO_WRK")


# -- profiles (--profile): py-spy on the server while a figure runs ---------------------------


def start_profile(pid: int | None, seconds: float, out: Path | None) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if pid is None or out is None or not Path(spy).exists():
        return None
    argv = [spy, "record", "-p", str(pid), "-r", "200", "-d", str(int(seconds) + 1)]
    argv += ["--gil", "--format", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(
        procs.pinned(argv, LOAD_CORE), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def finish_profile(spy: subprocess.Popen | None, out: Path | None) -> None:
    if spy is None or out is None:
        return
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(5)
    if out.exists():
        (out.with_suffix(".top.txt")).write_text(summarise_profile(out))
        log(f"profile: {out} (summary {out.with_suffix('.top.txt')})")


def _package(frame: str) -> str:
    """The top-level package (or stdlib module) of a "function (path)" frame."""
    m = re.search(r"\(([^)]*)\)$", frame)
    path = m.group(1) if m else frame
    if path.startswith("<"):
        return path
    return path.split("/")[0].removesuffix(".py")


def summarise_profile(path: Path, top: int = 40) -> str:
    """Self and inclusive sample shares per function, from py-spy's collapsed stacks."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    pkg_self: dict[str, int] = {}
    pkg_incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # Functions, not lines: "name (file:line)" -> "name (file)".
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for frame in set(frames):
            incl_counts[frame] = incl_counts.get(frame, 0) + count
        pkg_self[_package(leaf)] = pkg_self.get(_package(leaf), 0) + count
        for pkg in {_package(f) for f in frames}:
            pkg_incl[pkg] = pkg_incl.get(pkg, 0) + count
    lines = [f"{total} samples (py-spy --gil: the thread holding the GIL)", "", "by package:"]
    for pkg, n in sorted(pkg_self.items(), key=lambda kv: -kv[1])[:20]:
        share, incl = 100 * n / max(total, 1), 100 * pkg_incl.get(pkg, 0) / max(total, 1)
        lines.append(f"  self {share:5.1f}%  inclusive {incl:5.1f}%  {pkg}")
    lines += ["", "self time:"]
    for frame, n in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / max(total, 1):6.1f}%  {frame}")
    lines += ["", "inclusive time:"]
    for frame, n in sorted(incl_counts.items(), key=lambda kv: -kv[1])[: top * 2]:
        lines.append(f"{100 * n / max(total, 1):6.1f}%  {frame}")
    return "\n".join(lines) + "\n"


# -- the figures ------------------------------------------------------------------------------


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline in (None, 0):
        return None
    return value / baseline  # type: ignore[operator]


def figure_ttft(env: Env, plan: Plan, user: User) -> list[Figure]:
    assert env.alice is not None
    job = {
        "mode": "ttft",
        "port": env.alice_port,
        "fake_port": env.fake_port,
        "token": user.access,
        "count": plan.ttft_messages,
        "warmup": plan.ttft_warmup,
        "messages_per_conversation": 10,
        "tokens": 5,
        "nonce": env.run_id,
        "max_seconds": 240,
    }
    r = procs.run_client(job, timeout=300)
    alice, fake = r["alice"], r["fake"]
    fake_p50 = percentile(fake, 50)
    detail = {
        "alice_ttft_ms": summary_ms(alice),
        "fake_ttft_ms": summary_ms(fake),
        "alice_until_fake_has_request_ms": summary_ms(r.get("to_fake", [])),
        "failures": r["failures"][:5],
        "failed": len(r["failures"]),
        "method": "ALICE's time to its first `token` event minus the fake's median time to "
        "first delta for the same request bodies, sent straight to it, alternately",
    }
    out = []
    for q, target in ((50, 2.0), (99, 15.0)):
        a = percentile(alice, q)
        added = None if a is None or fake_p50 is None else (a - fake_p50) * 1000
        fq = percentile(fake, q)
        out.append(
            Figure(
                key=f"ttft_added_p{q}",
                name=f"added time to first token, p{q}",
                unit="ms",
                value=added,
                baseline=None if fq is None else fq * 1000,
                baseline_label=f"fake's own TTFT p{q}",
                ratio=ratio(a, fq),
                target=f"<= {target:g} ms",
                met=None if added is None else (added <= target and not r["failures"]),
                detail=detail if q == 50 else {},
            )
        )
    if env.bare is not None:
        out.append(_relays_ttft(env, plan, percentile(alice, 50), fake_p50))
    return out


def _relays_ttft(env: Env, plan: Plan, alice_p50: float | None, fake_p50: float | None) -> Figure:
    """The added time to first token of the bare relay and of the SDK relay, each against the
    fake's own for the body it sends (in turn with them): what the SDK adds on its own."""
    job = {
        "mode": "relay_ttft",
        "port": env.bare_port,
        "fake_port": env.fake_port,
        "count": plan.ttft_messages,
        "warmup": plan.ttft_warmup,
        "tokens": 5,
    }
    r = procs.run_client(job, timeout=300)
    own = percentile(r["fake"], 50)

    def added(values: list[float]) -> float | None:
        p50 = percentile(values, 50)
        return None if p50 is None or own is None else (p50 - own) * 1000

    alice = None if alice_p50 is None or fake_p50 is None else (alice_p50 - fake_p50) * 1000
    detail = {
        "relay_ttft_ms": summary_ms(r["relay"]),
        "sdk_relay_ttft_ms": summary_ms(r["relay-sdk"]),
        "fake_ttft_ms": summary_ms(r["fake"]),
        "failures": r["failures"][:5],
    }
    return _against_sdk_relay(
        "ttft_added_p50_vs_sdk_relay",
        "added time to first token p50, against the SDK relay",
        "ms",
        alice,
        added(r["relay-sdk"]),
        added(r["relay"]),
        detail,
    )


def figure_http(env: Env, plan: Plan, me_user: User) -> list[Figure]:
    """The bare JSON route, /auth/me and /conversations, in interleaved rounds (so that a
    change of the machine's speed during the run hits all three alike); each figure is the
    median of its rounds."""
    assert env.alice is not None and env.bare is not None
    auth = {"Authorization": f"Bearer {me_user.access}"}
    conns, secs = plan.http_connections, plan.http_seconds
    targets = {
        "bare": (env.bare_port, "/json", {}, env.bare.pid),
        "me": (env.alice_port, "/api/v1/auth/me", auth, env.alice.pid),
        "convs": (env.alice_port, "/api/v1/chat/conversations?limit=20", auth, env.alice.pid),
    }
    for port, path, headers, pid in targets.values():  # warm-up, not counted
        http_load(port, path, headers, plan.http_warmup_seconds, conns, pid)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for i in range(plan.http_rounds):
        for name, (port, path, headers, pid) in targets.items():
            prof = None
            if env.args.profile and name == "me" and i == 0:
                prof = env.out / "profile-auth-me.txt"
            r = http_load(port, path, headers, secs, conns, pid, prof)
            rounds[name].append(r)
        log(
            f"throughput round {i + 1}/{plan.http_rounds}: "
            + ", ".join(f"{n} {rounds[n][-1]['rps']:,.0f} req/s" for n in targets)
        )

    def median(name: str) -> dict[str, Any]:
        rs = sorted(rounds[name], key=lambda r: r["rps"])
        mid = dict(rs[len(rs) // 2])
        mid["rounds_rps"] = [round(r["rps"], 1) for r in rounds[name]]
        mid["non_2xx"] = sum(r["non_2xx"] for r in rounds[name])
        mid["errors"] = sum(r["errors"] for r in rounds[name])
        return mid

    bare, me, convs = median("bare"), median("me"), median("convs")
    out = []
    for key, name, r, target in (
        ("auth_me_rps", "GET /auth/me throughput", me, 0.30),
        ("conversations_rps", "GET /chat/conversations?limit=20 throughput", convs, 0.15),
    ):
        rr = ratio(r["rps"], bare["rps"])
        ok = r["non_2xx"] == 0 and r["errors"] == 0
        out.append(
            Figure(
                key=key,
                name=name,
                unit="req/s",
                value=r["rps"],
                baseline=bare["rps"],
                baseline_label="bare Starlette JSON route",
                ratio=rr,
                target=f">= {target:.0%} of baseline",
                met=None if rr is None else (rr >= target and ok),
                detail={
                    "alice": r,
                    "bare": bare,
                    "connections": conns,
                    "seconds": secs,
                    "rounds": plan.http_rounds,
                },
            )
        )
    return out


def figure_walk(env: Env, plan: Plan, user: User) -> list[Figure]:
    assert env.alice is not None
    log(
        f"page cost: seeding {plan.walk_messages:,} messages into one conversation's active "
        f"branch, with a side branch of {SIDE_BRANCH_LENGTH} beside every {SIDE_BRANCH_EVERY}th"
    )
    t = time.monotonic()
    conv_id = seed_long_conversation(env, user, plan.walk_messages)
    seed_seconds = time.monotonic() - t
    log("page cost: walking the conversation, then its first and last pages in turn")
    return [
        _walk_figure(
            env,
            plan,
            user,
            {"conversation_id": conv_id},
            expected=plan.walk_messages,
            key="page_cost_ratio",
            name=f"page cost at depth ({plan.walk_messages:,} msgs, limit 50)",
            extra={"seed_seconds": round(seed_seconds, 2)},
        )
    ]


def figure_search(env: Env, plan: Plan, user: User) -> list[Figure]:
    """Search pages walked over the walk's conversation: every one of its messages holds
    "lorem", on its active branch and its side branches, so the walk pages through all of
    them, newest first."""
    # Search covers every branch (SPEC 15): the side branches' messages are hits too.
    hits = plan.walk_messages + plan.walk_messages // SIDE_BRANCH_EVERY * SIDE_BRANCH_LENGTH
    log("search cost: walking the search pages of one word, then the first and last in turn")
    return [
        _walk_figure(
            env,
            plan,
            user,
            {"path": f"/api/v1/chat/search?q=lorem&limit={WALK_LIMIT}"},
            expected=hits,
            key="search_page_cost_ratio",
            name=f"search page cost at depth ({hits:,} hits, limit {WALK_LIMIT})",
        )
    ]


WALK_LIMIT = 50


def _walk_figure(
    env: Env,
    plan: Plan,
    user: User,
    target: dict[str, Any],
    *,
    expected: int,
    key: str,
    name: str,
    extra: dict[str, Any] | None = None,
) -> Figure:
    """Every page of `target` (a conversation's messages, or a `path`), then its first and
    last pages again in turn: the last pages' median against the first pages'."""
    assert env.alice is not None
    job = {
        "mode": "walk",
        "port": env.alice_port,
        "token": user.access,
        **target,
        "limit": WALK_LIMIT,
        "max_pages": expected // WALK_LIMIT + 5,
        "max_seconds": 300,
        "edge_pages": plan.walk_edge_pages,
        "edge_rounds": 3,
    }
    r = procs.run_client(job, timeout=360)
    times = r["times"]
    k = min(plan.walk_edge_pages, max(len(times) // 4, 1))
    # The figure: the edge pages fetched again in turn (same moments, same cache state).
    first = percentile(r["first_again"] or times[:k], 50)
    last = percentile(r["last_again"] or times[-k:], 50)
    rr = ratio(last, first)
    complete = r["items"] == expected and r["error"] is None
    return Figure(
        key=key,
        name=name,
        unit="ms/page",
        value=None if last is None else last * 1000,
        baseline=None if first is None else first * 1000,
        baseline_label=f"median of the first {k} pages (in turn with the last)",
        ratio=rr,
        target="last/first <= 1.2",
        met=None if rr is None else (rr <= 1.2 and complete),
        detail={
            "pages": r["pages"],
            "items": r["items"],
            "error": r["error"],
            "edge_pages": k,
            "all_pages_ms": summary_ms(times),
            "walk_first_pages_ms": summary_ms(times[:k]),
            "walk_last_pages_ms": summary_ms(times[-k:]),
            "edge_fetches_each": len(r["first_again"]),
            "value_is": f"median of the last {k} pages, fetched in turn with the first",
            **(extra or {}),
        },
    )


def figure_stall(env: Env, plan: Plan, user: User) -> list[Figure]:
    assert env.alice is not None
    job = {
        "mode": "stall",
        "port": env.alice_port,
        "email": user.email,
        "password": PASSWORD,
        "logins": plan.logins,
        "server_pid": env.alice.pid,
        "idle_seconds": 2,
        "pace_ms": 2,
        "max_seconds": 120,
    }
    r = procs.run_client(job, timeout=180)
    busy_p99 = r["busy"]["p99"]
    idle_p99 = r["idle"]["p99"]
    ok = r["logins"] == plan.logins and r["login_statuses"] == [200] and not r["errors"]
    return [
        Figure(
            key="event_loop_stall",
            name=f"event-loop stall: /health p99 during {plan.logins} logins",
            unit="ms",
            value=busy_p99,
            baseline=idle_p99,
            baseline_label="/health p99 at rest",
            ratio=ratio(busy_p99, idle_p99),
            target="<= 20 ms",
            met=None if busy_p99 is None else (busy_p99 <= 20 and ok),
            detail=r,
        ),
        _login_memory_figure(plan, r),
    ]


# Argon2id at the production cost holds 64 MiB per hash, at most 4 at once per process
# (ALICE_ARGON2_MAX_CONCURRENT); the rest is threads and allocator slack.
LOGIN_MEMORY_BOUND_MIB = 4 * 64 + 64


def _login_memory_figure(plan: Plan, r: dict[str, Any]) -> Figure:
    before, peak = r.get("rss_before_kib"), r.get("rss_peak_kib")
    growth = None if before is None or peak is None else (peak - before) / 1024
    return Figure(
        key="login_burst_memory",
        name=f"peak memory growth during {plan.logins} logins (Argon2id 64 MiB, 4 at once)",
        unit="MiB",
        value=growth,
        baseline=None if before is None else before / 1024,
        baseline_label="server RSS before the burst",
        ratio=None,
        target=f"<= {LOGIN_MEMORY_BOUND_MIB} MiB",
        met=None if growth is None else growth <= LOGIN_MEMORY_BOUND_MIB,
        detail={"rss_samples": r.get("rss_samples")},
    )


def _stream_job(env: Env, target: str, n: int, plan: Plan, users: list[User]) -> dict[str, Any]:
    server = env.alice if target == "alice" else env.bare  # the relay is a route of bare
    assert server is not None
    return {
        "mode": "streams",
        "target": target,
        "port": server.port,
        "server_pid": server.pid,
        "count": n,
        "users": [u.access for u in users],
        "tokens": plan.stream_tokens,
        "delay_ms": plan.stream_delay_ms,
        "timeout": 30 + n * 0.05,
        "record_gaps": True,
    }


def _per_reply_ms(r: dict[str, Any], n: int) -> str:
    cpu = r.get("server_cpu_seconds")
    return "?" if not cpu else f"{cpu / n * 1000:.2f}"


def _against_sdk_relay(
    key: str,
    name: str,
    unit: str,
    value: float | None,
    sdk_value: float | None,
    relay: float | None,
    detail: dict[str, Any] | None = None,
) -> Figure:
    """A figure without a target: ALICE against the relay that reads through the official SDK
    (`/relay-sdk`), which ALICE must use; the bare relay reads with aiohttp alone."""
    return Figure(
        key=key,
        name=name,
        unit=unit,
        value=value,
        baseline=sdk_value,
        baseline_label="relay through the official SDK (/relay-sdk)",
        ratio=ratio(value, sdk_value),
        target="- (the SDK's own cost)",
        met=None,
        detail=detail or {},
        relay=relay,
    )


def figure_streams(env: Env, plan: Plan, users: list[User]) -> list[Figure]:
    """Each level on freshly started servers (so that RSS growth is this level's alone), after
    a short warm-up; the bare SSE route (the stack's limit) and the bare relay (the same
    reading upstream, ALICE's fair limit) run the same level as the baselines."""
    levels: dict[int, dict[str, Any]] = {}
    for n in plan.stream_levels:
        level: dict[str, Any] = {}
        for target in ("bare", "relay", "relay-sdk", "alice"):
            if target == "alice":
                refresh_users(env.alice_port, users)
                env.restart_alice()
            else:
                env.restart_bare()
            warm = procs.run_client(_stream_job(env, target, 10, plan, users), timeout=60)
            if warm["failed"]:
                log(f"streams warm-up ({target}): {warm['failures']}")
            time.sleep(1.0)
            job = _stream_job(env, target, n, plan, users)
            base = procs.rss_kib(job["server_pid"])
            spy = None
            prof = None
            if env.args.profile and target == "alice" and n == plan.relay_level:
                prof = env.out / f"profile-streams-{n}.txt"
                spy = start_profile(job["server_pid"], min(job["timeout"], 30), prof)
            log(f"streams: {n} at once on {target}")
            r = procs.run_client(job, timeout=job["timeout"] + 60)
            finish_profile(spy, prof)
            r["rss_base_kib"] = base
            peak = r.get("rss_peak_kib")
            r["kib_per_stream"] = (
                (peak - base) / r["peak_open"]
                if peak is not None and base is not None and r["peak_open"]
                else None
            )
            r["rate"] = r["tokens"] / r["wall_seconds"] if r["wall_seconds"] else None
            r["cpu_us_per_token"] = (
                r["server_cpu_seconds"] / r["tokens"] * 1e6
                if r.get("server_cpu_seconds") and r["tokens"]
                else None
            )
            log(
                f"  {target}: ok {r['ok']}/{n}, peak open {r['peak_open']}, "
                f"{r['tokens']} tokens in {r['wall_seconds']:.2f}s, "
                f"server CPU {_per_reply_ms(r, n)} ms a reply, "
                f"gap p99 {r['gap_summary']['p99']} ms, failures {r['failures']}"
            )
            level[target] = r
        levels[n] = level

    out: list[Figure] = []
    for n, level in levels.items():
        a, b, r = level["alice"], level["bare"], level["relay"]
        slim = {t: {k: v for k, v in level[t].items() if k != "gaps"} for t in level}
        out.append(
            Figure(
                key=f"streams_{n}_failed",
                name=f"open streams {n}: failed (peak open {a['peak_open']})",
                unit="streams",
                value=a["failed"],
                baseline=b["failed"],
                baseline_label="bare SSE route, failed",
                ratio=None,
                target="0",
                met=a["failed"] == 0,
                detail=slim,
                relay=r["failed"],
            )
        )
        kib, relay_kib = a["kib_per_stream"], r["kib_per_stream"]
        rr = ratio(kib, relay_kib)
        out.append(
            Figure(
                key=f"streams_{n}_kib_per_stream",
                name=f"open streams {n}: memory growth per open stream",
                unit="KiB",
                value=kib,
                baseline=b["kib_per_stream"],
                baseline_label="bare SSE route",
                ratio=rr,
                target="<= 1.5x the bare relay",
                met=None if rr is None else rr <= 1.5,
                relay=relay_kib,
            )
        )
        if "relay-sdk" in level:
            out.append(
                _against_sdk_relay(
                    f"streams_{n}_kib_per_stream_sdk",
                    f"open streams {n}: memory per stream, against the SDK relay",
                    "KiB",
                    kib,
                    level["relay-sdk"]["kib_per_stream"],
                    relay_kib,
                )
            )
    for n, target_ms in ((plan.gap_level, 30), (plan.gap_level_high, 100)):
        if n not in levels:
            continue
        a, b, r = levels[n]["alice"], levels[n]["bare"], levels[n]["relay"]
        gp = a["gap_summary"]["p99"]
        out.append(
            Figure(
                key="gap_p99" if n == plan.gap_level else f"gap_p99_{n}",
                name=f"inter-token gap p99 at {n} streams (pace {plan.stream_delay_ms} ms)",
                unit="ms",
                value=gp,
                baseline=b["gap_summary"]["p99"],
                baseline_label="bare SSE route",
                ratio=ratio(gp, r["gap_summary"]["p99"]),
                target=f"<= {target_ms} ms",
                met=None if gp is None else gp <= target_ms,
                relay=r["gap_summary"]["p99"],
            )
        )
    if plan.relay_level in levels:
        a, b, r = (levels[plan.relay_level][t] for t in ("alice", "bare", "relay"))
        rr = ratio(a["rate"], r["rate"])
        out.append(
            Figure(
                key="relay_rate",
                name=f"tokens relayed per second at {plan.relay_level} streams",
                unit="tokens/s",
                value=a["rate"],
                baseline=b["rate"],
                baseline_label="bare SSE route, same events and pace",
                ratio=rr,
                target=">= 0.8 of the bare relay",
                met=None if rr is None else rr >= 0.8,
                relay=r["rate"],
                detail={
                    "alice_cpu_us_per_token": a["cpu_us_per_token"],
                    "relay_cpu_us_per_token": r["cpu_us_per_token"],
                    "bare_cpu_us_per_token": b["cpu_us_per_token"],
                    "alice_cpu_busy": a["cpu_busy_percent"],
                    "relay_cpu_busy": r["cpu_busy_percent"],
                    "bare_cpu_busy": b["cpu_busy_percent"],
                    "relay_share_of_bare": ratio(r["rate"], b["rate"]),
                },
            )
        )
        sdk = levels[plan.relay_level].get("relay-sdk")
        if sdk is not None:
            out.append(
                _against_sdk_relay(
                    "relay_rate_sdk",
                    f"tokens/s at {plan.relay_level} streams, against the SDK relay",
                    "tokens/s",
                    a["rate"],
                    sdk["rate"],
                    r["rate"],
                    detail={
                        "sdk_relay_cpu_us_per_token": sdk["cpu_us_per_token"],
                        "sdk_relay_share_of_relay": ratio(sdk["rate"], r["rate"]),
                    },
                )
            )
    return out


# -- output -----------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if value < 2 else f"{value:.1f}x"


def table(figures: list[Figure]) -> str:
    """One row per figure: ALICE, the bare relay (reply-path figures), the other baseline, all
    from this run; the ratio is to the bare relay where there is one, else to the baseline."""
    head = ("figure", "ALICE", "bare relay", "baseline (same run)", "ratio", "target", "result")
    rows = [head]
    for f in figures:
        rows.append(
            (
                f.name,
                _fmt(f.value, f.unit),
                _fmt(f.relay, f.unit),
                _fmt(f.baseline, f.unit) + (f" ({f.baseline_label})" if f.baseline_label else ""),
                _fmt_ratio(f.ratio),
                f.target,
                {True: "met", False: "MISSED", None: "n/a"}[f.met],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def background_load(seconds: float = 1.0) -> dict[str, float]:
    """Busy % of each CPU over `seconds` while the benchmark itself is idle: other work on the
    machine (a test run, another benchmark) slows every figure down, baselines included."""

    snap = cpu_times

    a = snap()
    time.sleep(seconds)
    b = snap()
    return {k: round(100 * (b[k][0] - a[k][0]) / max(b[k][1] - a[k][1], 1), 1) for k in b if k in a}


def _git() -> dict[str, Any]:
    def run(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, check=False)
        return done.stdout.decode().strip()

    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain"))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts, under 3 minutes")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL + Redis on loopback")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy profiles of /auth/me and of the relay into bench/out/ "
        "(the profiled figures run slower)",
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(GROUPS)}"
    )
    parser.add_argument(
        "--stream-tokens",
        type=int,
        default=None,
        help="tokens a reply in the streams figures (default 50): 1 shows a reply's fixed "
        "cost, a few hundred the cost per token",
    )
    args = parser.parse_args(argv)
    only = {g.strip() for g in args.only.split(",") if g.strip()} or set(GROUPS)
    unknown = only - set(GROUPS)
    if unknown:
        parser.error(f"unknown figure groups: {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    if args.stream_tokens is not None:
        plan = replace(plan, stream_tokens=max(args.stream_tokens, 1))

    if procs.can_pin():
        os.sched_setaffinity(0, {LOAD_CORE})
    else:
        log("warning: taskset or a second core is missing: nothing is pinned")
    if not use_wrk():
        log(
            "wrk is not installed: throughput is measured with the asyncio client instead "
            "(it may be the bottleneck of the bare baseline; `apt-get install wrk` for wrk)"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = OUT / stamp
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    env = Env(args, out)
    figures: list[Figure] = []
    errors: list[str] = []
    noise_before: dict[str, float] = {}
    try:
        if args.postgres:
            asyncio.run(_create_pg(env.pg_db or ""))
        log(f"starting the fake Anthropic server, the bare baseline and ALICE (logs: {out})")
        env.start_fake()
        env.start_bare()
        env.start_alice()
        noise_before = background_load()
        if max(noise_before.values(), default=0) > 10:
            log(
                f"warning: the machine is busy with other work ({noise_before} % busy at rest): "
                "figures will be slower and noisier than on a quiet machine"
            )
        need_streams = "streams" in only
        n_users = 4 + (plan.stream_users if need_streams else 0)
        log(f"registering {n_users} users (Argon2 at its defaults)")
        users = register_users(env.alice_port, f"bench-{env.run_id}", n_users)
        ttft_user, main_user, walk_user, stall_user = users[:4]
        stream_users = users[4:]

        def group(name: str, fn, *fargs) -> None:  # type: ignore[no-untyped-def]
            if name not in only:
                return
            assert env.alice is not None
            if not env.alice.alive():
                log(f"ALICE is not running: restarting it before {name}")
                env.start_alice()
            t = time.monotonic()
            log(f"--- {name}")
            try:
                refresh_users(env.alice_port, users)
                figures.extend(fn(*fargs))
            except Exception as exc:  # noqa: BLE001 - one figure failing must not hide the rest
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                log(f"{name} failed: {type(exc).__name__}: {exc}")
            log(f"--- {name} took {time.monotonic() - t:.1f}s")

        group("ttft", figure_ttft, env, plan, ttft_user)
        if "http" in only:
            seed_conversations(env, main_user, plan.conversations)
        group("http", figure_http, env, plan, main_user)
        group("walk", figure_walk, env, plan, walk_user)
        if "walk" in only:  # the search walks the messages the walk seeded
            group("walk", figure_search, env, plan, walk_user)
        group("stall", figure_stall, env, plan, stall_user)
        group("streams", figure_streams, env, plan, stream_users)
    finally:
        env.close()
    elapsed = time.monotonic() - started
    noise_after = background_load()  # our servers are gone: what is left is other work

    print()
    print(
        f"ALICE benchmarks ({'quick' if args.quick else 'full'}, "
        f"{'PostgreSQL + Redis' if args.postgres else 'SQLite, in-process'}, one worker; "
        f"server on core {SERVER_CORE}, load on core {LOAD_CORE}; "
        f"{'wrk' if use_wrk() else 'asyncio client'}; {elapsed:.0f}s)"
    )
    if noise_before:
        busy = ", ".join(f"{k} {v:.0f}%" for k, v in noise_before.items())
        print(f"other work on the machine at the start (busy at rest): {busy}")
    print(table(figures))
    for e in errors:
        print(f"error: {e}")
    met = sum(1 for f in figures if f.met is True)
    missed = sum(1 for f in figures if f.met is False)
    targets = sum(1 for f in figures if f.met is not None)  # n/a: information, no target
    print(f"\n{met} of {targets} figures with a target met it, {missed} missed.")

    result = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "database": "postgresql+redis" if args.postgres else "sqlite",
            "plan": asdict(plan),
            "git": _git(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "pinned": procs.can_pin(),
            "load_tool": "wrk" if use_wrk() else "asyncio client",
            "seconds": round(elapsed, 1),
            "background_cpu_busy_percent": {"start": noise_before, "end": noise_after},
            "logs": str(out),
        },
        "figures": [asdict(f) for f in figures],
        "errors": errors,
    }
    text = json.dumps(result, indent=2, default=str) + "\n"
    RESULTS.write_text(text)
    (out / "results.json").write_text(text)  # kept with the run's logs
    print(f"results: {RESULTS.relative_to(REPO)}")
    prune_outputs(keep=10)
    if errors:
        sys.exit(1)


def prune_outputs(keep: int) -> None:
    """Keep the logs and profiles of the last `keep` runs in bench/out/."""
    runs = sorted(p for p in OUT.iterdir() if p.is_dir() and re.fullmatch(r"\d{8}-\d{6}", p.name))
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
