"""Real `alice serve` processes for the tests that need more than one: their environment, a
database of their own (a fresh PostgreSQL database and a Redis key prefix, dropped after), the
migration, and each process's start, readiness and stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import POSTGRES_URL, REDIS_URL, delete_redis_keys

ALICE = Path(sys.executable).parent / "alice"
SECRET = "multiprocess-test-secret-key-of-at-least-32-bytes"
# How long a process may take to answer /health: a loaded machine has taken 30 s to start one.
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_thread(fn: Any) -> Any:
    """Run an async function to its end in a thread of its own (not in a test's loop)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = asyncio.run(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def process_env(workdir: Path, **settings: str) -> dict[str, str]:
    """The environment of a test's `alice serve`: development, cheap Argon2, one secret for
    every process of the test, then `settings` (ALICE_… names; ALICE_DATABASE_URL at least)."""
    assert "ALICE_DATABASE_URL" in settings
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(workdir)),
        "ALICE_ENV": "development",
        "ALICE_SECRET_KEY": SECRET,
        "ALICE_DATA_DIR": str(workdir / "data"),
        "ALICE_ARGON2_TIME_COST": "1",
        "ALICE_ARGON2_MEMORY_KIB": "1024",
        "ALICE_ARGON2_PARALLELISM": "1",
        **settings,
    }


def migrate(env: dict[str, str], workdir: Path) -> None:
    subprocess.run([str(ALICE), "migrate"], env=env, cwd=workdir, check=True, capture_output=True)


@contextmanager
def postgres_and_redis(prefix: str) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and a Redis key prefix, as the settings that name them;
    both are gone afterwards."""
    import asyncpg

    assert POSTGRES_URL and REDIS_URL
    plain = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    tag = uuid.uuid4().hex[:10]
    dbname = f"{prefix.replace('-', '_')}_{tag}"
    redis_prefix = f"{prefix}-{tag}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(plain)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create() -> None:
        await admin(f'CREATE DATABASE "{dbname}"')

    async def drop() -> None:
        await admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await delete_redis_keys(REDIS_URL, f"{redis_prefix}*")

    in_thread(create)
    base, _, _ = POSTGRES_URL.rpartition("/")
    try:
        yield {
            "ALICE_DATABASE_URL": f"{base}/{dbname}",
            "ALICE_REDIS_URL": REDIS_URL,
            "ALICE_REDIS_PREFIX": redis_prefix,
        }
    finally:
        in_thread(drop)


@dataclass
class Proc:
    name: str
    env: dict[str, str]
    workdir: Path
    port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None
    # The umask `alice serve` starts with (None: this process's).
    umask: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        umask = self.umask

        def before() -> None:
            if umask is not None:
                os.umask(umask)

        self.popen = subprocess.Popen(
            [str(ALICE), "serve", "--port", str(self.port)],
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=before,  # noqa: PLW1509 - only sets the umask
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Proc:
        assert self.popen is not None
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer /health:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        stop_process(self.popen, 15)


def stop_process(popen: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; nothing for a process already gone."""
    if popen is None or popen.poll() is not None:
        return
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(5)
