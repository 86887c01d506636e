"""The processes of a benchmark run: start them pinned, wait for them, read them, stop them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SERVER_CORE = 0
LOAD_CORE = 1
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(argv: list[str], core: int) -> list[str]:
    """`argv` run on one core (taskset), when the machine has two cores and taskset."""
    return ["taskset", "-c", str(core), *argv] if can_pin() else argv


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_kib(self) -> int | None:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(5)


def start(
    name: str,
    argv: list[str],
    *,
    port: int,
    core: int,
    env: dict[str, str],
    cwd: Path,
    log_dir: Path,
    ready_path: str = "/health",
    ready_timeout: float = 60,
) -> Proc:
    """Start `argv` pinned to `core`, its output to a log file; wait until `ready_path` is 200."""
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        popen = subprocess.Popen(
            pinned(argv, core),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    proc = Proc(name, popen, port, log_path)
    deadline = time.monotonic() + ready_timeout
    url = f"http://127.0.0.1:{port}{ready_path}"
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{name} exited at start:\n{proc.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return proc
            time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{name} was not ready after {ready_timeout}s:\n{proc.log_tail()}")


def run_client(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one job in the load-client process (`bench.client`), pinned to the load core."""
    argv = pinned([sys.executable, "-m", "bench.client"], LOAD_CORE)
    done = subprocess.run(
        argv,
        input=json.dumps(job).encode(),
        capture_output=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"load client ({job['mode']}) failed: {done.stderr.decode(errors='replace')[-2000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result
