"""The README's curl session, run as written against a real `alice serve` process."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
ALICE = Path(sys.executable).parent / "alice"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_session(name: str = "session", language: str = "sh") -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(
        rf"<!-- {name}:start -->\s*```{language}\n(.*?)```\s*<!-- {name}:end -->", text, re.S
    )
    assert block, f"README lost its {name} block"
    return block.group(1)


def start_server(tmp_path: Path, port: int, **env: str) -> subprocess.Popen:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ALICE_", "ANTHROPIC_"))},
        "ALICE_DATA_DIR": str(tmp_path / "data"),
        "ALICE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'alice.db'}",
        "ALICE_MOCK_TOKEN_DELAY_MS": "0",
        "ALICE_ARGON2_TIME_COST": "1",
        "ALICE_ARGON2_MEMORY_KIB": "1024",
        "ALICE_ARGON2_PARALLELISM": "1",
        **env,
    }
    proc = subprocess.Popen(
        [str(ALICE), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"alice serve did not start:\n{proc.stdout.read().decode()}")


def test_readme_curl_session_works_verbatim_twice_in_a_row(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port)
    try:
        script = readme_session().replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
        runs = [
            subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            for _ in range(2)
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    emails = set()
    for done in runs:
        _check_session(done, tmp_path)
        emails.add(json.loads(done.stdout.splitlines()[0])["email"])
    assert len(emails) == 2  # a new account each run
    # The development secret was made once, private to its owner.
    assert oct((tmp_path / "data" / "secret.key").stat().st_mode & 0o777) == "0o600"


def _check_session(done: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    lines = out.splitlines()
    me = json.loads(lines[0])
    assert re.fullmatch(r"ada-\d+-\d+@example\.com", me["email"]) and me["display_name"] == "Ada"
    stream = (tmp_path / "reply.txt").read_text()
    assert stream.startswith("retry: 1000\nid: ")
    assert "event: conversation" in stream and "event: token" in stream
    assert stream.rstrip().split("\n\n")[-1].splitlines()[1] == "event: done"
    page = json.loads(next(line for line in lines if line.startswith('{"items"')))
    assert [m["role"] for m in page["items"]] == ["user", "assistant"]
    assert page["items"][1]["status"] == "complete"
    sessions = json.loads(next(line for line in lines if '"current"' in line))["items"]
    assert [s["current"] for s in sessions] == [False, True]  # the login, then the register
    assert sessions[0]["user_agent"].startswith("curl/") and sessions[0]["ip"] == "127.0.0.1"
    assert [line for line in lines if line == "204"] == ["204", "204"]
    assert lines[-2] == "204"
    # Branches: an edit and a regenerate streamed to their end; the switch back answered the
    # first version's branch, whose question now has two versions.
    for name in ("edit.txt", "regenerated.txt"):
        events = (tmp_path / name).read_text().rstrip().split("\n\n")
        assert events[0].splitlines()[2] == "event: conversation"
        assert events[-1].splitlines()[1] == "event: done"
    branch = json.loads((tmp_path / "branch.json").read_text())
    # (The files are the last run's: the session may run more than once in one folder.)
    assert [m["role"] for m in branch["items"]] == ["user", "assistant"]
    assert branch["items"][0]["content"] == "Hello ALICE!"
    assert [(m["sibling_index"], m["sibling_count"]) for m in branch["items"]] == [(0, 2), (0, 1)]
    assert json.loads(lines[-1])["code"] == "INVALID_TOKEN"


def test_readme_client_session_works_verbatim_twice_in_a_row(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port)
    try:
        script = readme_session("client-session", "python").replace(
            "http://127.0.0.1:8000", f"http://127.0.0.1:{port}"
        )
        runs = [
            subprocess.run(
                [sys.executable, "-c", script],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            for _ in range(2)
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for done in runs:
        assert done.returncode == 0, done.stderr + done.stdout
        lines = done.stdout.splitlines()
        assert lines[0] == "Ada"
        assert lines[1].startswith("Hello! I am ALICE") and lines[2].startswith("[complete, ")
        assert lines[3] == "user: Hello ALICE!"
        assert lines[4] == f"assistant: {lines[1]}"
