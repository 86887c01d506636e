"""The load client: a process of its own, pinned by the orchestrator to the load core.

Run as `python -m bench.client` with one JSON job on stdin; it prints one JSON result on
stdout. It talks to 127.0.0.1 only, over a minimal HTTP/1.1 client (asyncio, uvloop when
installed) that costs little per event, so that the servers, not the client, set the pace.
Every loop is bounded in count and in time.

Jobs (`"mode"`):
  ttft     sequential ALICE messages, each followed by the same request sent straight to the
           fake Anthropic server: time to the first `token` event / `content_block_delta`
  streams  N SSE streams opened at once (ALICE's POST /chat/message or the bare GET /sse):
           failures, tokens, inter-token gaps, peak open streams, server RSS and CPU
  http     fixed-duration GET load on C keep-alive connections (the fallback when wrk is
           not installed)
  stall    /health latency at rest, then while L logins run at once
  walk     a conversation's messages walked page by page with the keyset cursor
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from bench.procs import cpu_seconds, rss_kib

HOST = "127.0.0.1"
clock = time.perf_counter

TOKEN = b"event: token\n"
DONE = b"event: done\n"
ERROR = b"event: error\n"
_TAIL = len(TOKEN) - 1
_TERMINAL_RE = re.compile(rb"event: (done|error)\ndata: ([^\n]*)\n")
_CONVERSATION_RE = re.compile(rb"event: conversation\ndata: ([^\n]*)\n")


# -- a minimal HTTP/1.1 client ---------------------------------------------------------------


def build_request(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


class Conn:
    """One keep-alive connection; `request` reads a whole response (length or chunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 22)
        return cls(reader, writer)

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        self.writer.write(build_request(method, path, headers, body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, hdrs = parse_head(head)
        if "content-length" in hdrs:
            data = await self.reader.readexactly(int(hdrs["content-length"]))
        elif "chunked" in hdrs.get("transfer-encoding", ""):
            parts = []
            for _ in range(1_000_000):
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(parts)
        elif status in (204, 304):
            data = b""
        else:
            data = await self.reader.read()
        return status, data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- server-side readings: RSS, CPU ----------------------------------------------------------


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out: dict[str, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *vals = line.split()
                nums = [int(v) for v in vals]
                idle = nums[3] + (nums[4] if len(nums) > 4 else 0)
                out[name] = (sum(nums) - idle, sum(nums))
    return out


def cpu_busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict:
    busy = {}
    for name, (b1, t1) in after.items():
        b0, t0 = before.get(name, (0, 0))
        busy[name] = round(100 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else None
    return busy


class Sampler:
    """Samples the server's RSS every `every` seconds while running (bounded by `stop`)."""

    def __init__(self, pid: int | None, every: float = 0.05) -> None:
        self.pid = pid
        self.every = every
        self.peak = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.pid:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for _ in range(1_000_000):  # stopped (cancelled) by `stop` long before
            value = rss_kib(self.pid) if self.pid else None
            if value:
                self.peak = max(self.peak, value)
                self.samples += 1
            await asyncio.sleep(self.every)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- ttft ------------------------------------------------------------------------------------


async def _read_until(
    reader: asyncio.StreamReader, marker: bytes, done: re.Pattern[bytes] | None, timeout: float
) -> tuple[float | None, bytes]:
    """Read a response until EOF or `done` matches; the time `marker` first arrived."""
    buf = b""
    first = None
    async with asyncio.timeout(timeout):
        for _ in range(100_000):
            data = await reader.read(65536)
            if not data:
                break
            if first is None and marker in buf[-len(marker) :] + data:
                first = clock()
            buf += data
            if done is not None and done.search(buf):
                break
    return first, buf


async def ttft(job: dict[str, Any]) -> dict[str, Any]:
    port, fake_port = job["port"], job["fake_port"]
    token = job["token"]
    per_conv = job["messages_per_conversation"]
    timeout = job.get("timeout", 30)
    deadline = clock() + job.get("max_seconds", 300)
    alice: list[float] = []
    fake: list[float] = []
    # Both clocks are CLOCK_MONOTONIC (perf_counter here, monotonic in the fake): the moment
    # the fake had ALICE's request, after the client sent it, splits ALICE's time in two.
    to_fake: list[float] = []
    failures: list[str] = []
    conv_id: str | None = None
    total = job["warmup"] + job["count"]
    for i in range(total):
        if clock() > deadline:
            failures.append("time budget exhausted")
            break
        nonce = f"ttft-{job['nonce']}-{i}"
        content = f"Question {i} ({nonce}) [[tokens:{job['tokens']}]]"
        if i % per_conv == 0:
            conv_id = None
        body: dict[str, Any] = {"content": content}
        if conv_id:
            body["conversation_id"] = conv_id
        # ALICE: POST /chat/message, time to the first `token` event.
        try:
            conn = await Conn.open(port)
            payload = json.dumps(body).encode()
            headers = {
                **auth(token),
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
                "Connection": "close",
            }
            t0 = clock()
            conn.writer.write(build_request("POST", "/api/v1/chat/message", headers, payload))
            first, buf = await _read_until(conn.reader, TOKEN, _TERMINAL_RE, timeout)
            conn.close()
        except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
            failures.append(f"alice: {type(exc).__name__}: {exc}")
            conv_id = None
            continue
        terminal = _TERMINAL_RE.search(buf)
        conv = _CONVERSATION_RE.search(buf)
        if first is None or terminal is None or terminal.group(1) != b"done" or conv is None:
            failures.append(f"alice: bad stream {buf[:300]!r}")
            conv_id = None
            continue
        conv_id = json.loads(conv.group(1))["conversation_id"]
        # The fake, directly: the very request ALICE sent it, time to the first delta.
        try:
            rec = await _fake_record(fake_port, nonce)
            if rec is None:
                failures.append("fake: request not recorded")
                continue
            fconn = await Conn.open(fake_port)
            fbody = json.dumps(rec["body"]).encode()
            fheaders = {
                "Content-Type": "application/json",
                "x-api-key": "bench-key",
                "anthropic-version": "2023-06-01",
                "Connection": "close",
            }
            t1 = clock()
            fconn.writer.write(build_request("POST", "/v1/messages", fheaders, fbody))
            ffirst, _ = await _read_until(fconn.reader, b"content_block_delta", None, timeout)
            fconn.close()
        except Exception as exc:  # noqa: BLE001
            failures.append(f"fake: {type(exc).__name__}: {exc}")
            continue
        if ffirst is None:
            failures.append("fake: no delta")
            continue
        if i >= job["warmup"]:
            alice.append(first - t0)
            fake.append(ffirst - t1)
            to_fake.append(rec["started_at"] - t0)
    return {"alice": alice, "fake": fake, "to_fake": to_fake, "failures": failures}


async def relay_ttft(job: dict[str, Any]) -> dict[str, Any]:
    """The bare relay's and the SDK relay's time to their first `token` event (`bench/bare.py`),
    and the fake's own time to its first delta for the body they send it, in turn."""
    port, fake_port, tokens = job["port"], job["fake_port"], job["tokens"]
    timeout = job.get("timeout", 30)
    out: dict[str, list[float]] = {"relay": [], "relay-sdk": [], "fake": []}
    failures: list[str] = []
    fheaders = {
        "Content-Type": "application/json",
        "x-api-key": "bench-key",
        "anthropic-version": "2023-06-01",
        "Connection": "close",
    }
    for i in range(job["warmup"] + job["count"]):
        times: dict[str, float] = {}
        try:
            for name in ("relay", "relay-sdk"):
                conn = await Conn.open(port)
                path = f"/{name}?n={tokens}&delay=20&i={i}"
                t0 = clock()
                conn.writer.write(build_request("GET", path, {"Connection": "close"}))
                first, _ = await _read_until(conn.reader, TOKEN, _TERMINAL_RE, timeout)
                conn.close()
                if first is None:
                    raise RuntimeError(f"{name}: no token")
                times[name] = first - t0
            prompt = f"Stream {i} [[tokens:{tokens}]] [[delay:20]]"  # as bench/bare.py sends
            body = {
                "model": "bench-model",
                "max_tokens": 1024,
                "stream": True,
                "messages": [{"role": "user", "content": prompt}],
            }
            conn = await Conn.open(fake_port)
            t0 = clock()
            conn.writer.write(
                build_request("POST", "/v1/messages", fheaders, json.dumps(body).encode())
            )
            first, _ = await _read_until(conn.reader, b"content_block_delta", None, timeout)
            conn.close()
            if first is None:
                raise RuntimeError("fake: no delta")
            times["fake"] = first - t0
        except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
            failures.append(f"{type(exc).__name__}: {exc}")
            continue
        if i >= job["warmup"]:
            for name, value in times.items():
                out[name].append(value)
    return {**out, "failures": failures}


async def _fake_record(fake_port: int, nonce: str) -> dict[str, Any] | None:
    conn = await Conn.open(fake_port)
    try:
        status, data = await conn.request("GET", "/_fake/requests")
    finally:
        conn.close()
    if status != 200:
        return None
    for rec in reversed(json.loads(data)):
        body = rec.get("body")
        if isinstance(body, dict) and nonce in json.dumps(body.get("messages", [])[-1:]):
            return rec
    return None


# -- streams ---------------------------------------------------------------------------------


@dataclass
class StreamState:
    open_now: int = 0
    peak_open: int = 0
    tokens: int = 0
    first_sent: float | None = None
    last_end: float | None = None
    gaps: list[float] = field(default_factory=list)
    record_gaps: bool = True


class SSEStream(asyncio.Protocol):
    """One SSE request; counts `token` events straight off the socket bytes."""

    def __init__(self, request: bytes, state: StreamState, expected: int) -> None:
        self.request = request
        self.state = state
        self.expected = expected
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.status: int | None = None
        self.tail = b""
        self.tokens = 0
        self.last_token: float | None = None
        self.sent_at: float | None = None
        self.headers_at: float | None = None
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self.outcome: str | None = None  # "ok" or the reason it failed
        self.error_data = b""
        self.counted_open = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.sent_at = clock()
        if self.state.first_sent is None:
            self.state.first_sent = self.sent_at
        transport.write(self.request)

    def _finish(self, outcome: str) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.ended_at = clock()
        self.state.last_end = self.ended_at
        if self.counted_open:
            self.state.open_now -= 1
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.outcome is not None:
            return
        now = clock()
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head.split(b" ", 2)[1])
            self.headers_at = now
            data = self.head[end + 4 :]
            if self.status != 200:
                self.error_data = data[:300]
                self._finish(f"status {self.status}")
                return
            self.counted_open = True
            state = self.state
            state.open_now += 1
            if state.open_now > state.peak_open:
                state.peak_open = state.open_now
        buf = self.tail + data
        n = buf.count(TOKEN)
        if n:
            if self.first_token_at is None:
                self.first_token_at = now
            elif self.state.record_gaps and self.last_token is not None:
                self.state.gaps.append(now - self.last_token)
            if self.state.record_gaps and n > 1:
                self.state.gaps.extend([0.0] * (n - 1))
            self.last_token = now
            self.tokens += n
            self.state.tokens += n
        if DONE in buf:
            self._finish("ok" if self.tokens == self.expected else f"{self.tokens} tokens")
        elif ERROR in buf:
            self.error_data = buf[buf.find(ERROR) :][:300]
            self._finish("error event")
        self.tail = buf[-_TAIL:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("connection closed early")


async def streams(job: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    port = job["port"]
    n = job["count"]
    expected = job["tokens"]
    timeout = job["timeout"]
    pid = job.get("server_pid")
    state = StreamState(record_gaps=job.get("record_gaps", True))
    requests: list[bytes] = []
    for i in range(n):
        if job["target"] == "alice":
            tokens = job["users"][i % len(job["users"])]
            content = f"Stream {i} of {n} [[tokens:{expected}]] [[delay:{job['delay_ms']}]]"
            body = json.dumps({"content": content}).encode()
            headers = {
                **auth(tokens),
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
            }
            requests.append(build_request("POST", "/api/v1/chat/message", headers, body))
        elif job["target"] in ("relay", "relay-sdk"):
            path = f"/{job['target']}?n={expected}&delay={job['delay_ms']}&i={i}"
            requests.append(build_request("GET", path, {"Accept": "text/event-stream"}))
        else:
            path = f"/sse?n={expected}&delay={job['delay_ms']}"
            requests.append(build_request("GET", path, {"Accept": "text/event-stream"}))

    rss_before = rss_kib(pid) if pid else None
    cpu_before = cpu_seconds(pid) if pid else None
    cores_before = cpu_times()
    sampler = Sampler(pid)
    sampler.start()
    protocols = [SSEStream(req, state, expected) for req in requests]
    started = clock()

    async def connect(proto: SSEStream) -> None:
        try:
            await loop.create_connection(lambda: proto, HOST, port)
        except OSError as exc:
            proto._finish(f"connect: {type(exc).__name__}")

    async def run_all() -> None:
        await asyncio.gather(*(connect(p) for p in protocols))
        await asyncio.gather(*(p.done for p in protocols))

    timed_out = False
    try:
        await asyncio.wait_for(run_all(), timeout)
    except TimeoutError:
        timed_out = True
    for p in protocols:
        if p.outcome is None:
            p._finish("timeout")
    wall = (state.last_end or clock()) - (state.first_sent or started)
    await sampler.stop()
    cpu_after = cpu_seconds(pid) if pid else None
    cores_after = cpu_times()
    rss_after = rss_kib(pid) if pid else None

    failures: dict[str, int] = {}
    examples: list[str] = []
    for p in protocols:
        if p.outcome != "ok":
            key = p.outcome or "?"
            failures[key] = failures.get(key, 0) + 1
            if len(examples) < 3 and p.error_data:
                examples.append(p.error_data.decode("utf-8", "replace"))
    first_tokens = [
        p.first_token_at - p.sent_at for p in protocols if p.first_token_at and p.sent_at
    ]
    heads = [p.headers_at - p.sent_at for p in protocols if p.headers_at and p.sent_at]
    durations = [p.ended_at - p.sent_at for p in protocols if p.ended_at and p.sent_at]
    return {
        "count": n,
        "ok": sum(1 for p in protocols if p.outcome == "ok"),
        "failed": sum(1 for p in protocols if p.outcome != "ok"),
        "failures": failures,
        "failure_examples": examples,
        "timed_out": timed_out,
        "tokens": state.tokens,
        "expected_tokens": n * expected,
        "wall_seconds": wall,
        "peak_open": state.peak_open,
        "gaps": state.gaps if job.get("return_gaps") else [],
        "gap_summary": _summary(state.gaps),
        "headers": _summary(heads),
        "first_token": _summary(first_tokens),
        "duration": _summary(durations),
        "rss_before_kib": rss_before,
        "rss_peak_kib": max(sampler.peak, rss_before or 0, rss_after or 0) or None,
        "rss_after_kib": rss_after,
        "server_cpu_seconds": (
            cpu_after - cpu_before if cpu_after is not None and cpu_before is not None else None
        ),
        "cpu_busy_percent": cpu_busy(cores_before, cores_after),
    }


def _summary(values: list[float]) -> dict[str, Any]:
    from bench.stats import summary_ms

    return summary_ms(values)


# -- http (the wrk fallback) -----------------------------------------------------------------


async def http_load(job: dict[str, Any]) -> dict[str, Any]:
    port = job["port"]
    path = job["path"]
    headers = job.get("headers") or {}
    duration = job["duration"]
    pid = job.get("server_pid")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    cpu_before = cpu_seconds(pid) if pid else None
    stop_at = clock() + duration

    async def worker() -> None:
        try:
            conn = await Conn.open(port)
        except OSError as exc:
            errors.append(f"connect: {exc}")
            return
        try:
            for _ in range(100_000_000):
                if clock() >= stop_at:
                    break
                t = clock()
                status, _ = await asyncio.wait_for(conn.request("GET", path, headers), 30)
                latencies.append(clock() - t)
                statuses[status] = statuses.get(status, 0) + 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    started = clock()
    await asyncio.gather(*(worker() for _ in range(job["connections"])))
    elapsed = clock() - started
    cpu_after = cpu_seconds(pid) if pid else None
    total = sum(statuses.values())
    good = sum(v for k, v in statuses.items() if 200 <= k < 300)
    return {
        "requests": total,
        "ok": good,
        "non_2xx": total - good,
        "errors": len(errors),
        "error_examples": errors[:3],
        "seconds": elapsed,
        "rps": good / elapsed if elapsed else 0,
        "latency": _summary(latencies),
        "server_cpu_seconds": (
            cpu_after - cpu_before if cpu_after is not None and cpu_before is not None else None
        ),
    }


# -- stall -----------------------------------------------------------------------------------


async def stall(job: dict[str, Any]) -> dict[str, Any]:
    port = job["port"]
    pace = job.get("pace_ms", 2) / 1000
    conn = await Conn.open(port)

    async def probe() -> float:
        t = clock()
        status, _ = await asyncio.wait_for(conn.request("GET", "/health"), 30)
        if status != 200:
            raise RuntimeError(f"/health answered {status}")
        return clock() - t

    idle: list[float] = []
    until = clock() + job["idle_seconds"]
    for _ in range(1_000_000):
        if clock() >= until:
            break
        idle.append(await probe())
        await asyncio.sleep(pace)

    body = json.dumps({"email": job["email"], "password": job["password"]}).encode()
    login_results: list[tuple[int, float]] = []

    async def login() -> None:
        c = await Conn.open(port)
        try:
            t = clock()
            status, _ = await asyncio.wait_for(
                c.request(
                    "POST",
                    "/api/v1/auth/login",
                    {"Content-Type": "application/json", "Connection": "close"},
                    body,
                ),
                120,
            )
            login_results.append((status, clock() - t))
        finally:
            c.close()

    pid = job.get("server_pid")
    rss_before = rss_kib(pid) if pid else None
    sampler = Sampler(pid)
    sampler.start()
    tasks = [asyncio.create_task(login()) for _ in range(job["logins"])]
    busy: list[float] = []
    started = clock()
    hard_stop = started + job.get("max_seconds", 120)
    for _ in range(1_000_000):
        if all(t.done() for t in tasks) or clock() > hard_stop:
            break
        busy.append(await probe())
        await asyncio.sleep(pace)
    burst = clock() - started
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await sampler.stop()
    conn.close()
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return {
        "rss_before_kib": rss_before,
        "rss_peak_kib": max(sampler.peak, rss_before or 0) or None,
        "rss_samples": sampler.samples,
        "idle": _summary(idle),
        "busy": _summary(busy),
        "burst_seconds": burst,
        "logins": len(login_results),
        "login_statuses": sorted({s for s, _ in login_results}),
        "login_latency": _summary([d for _, d in login_results]),
        "errors": errors[:3],
    }


# -- walk ------------------------------------------------------------------------------------


async def walk(job: dict[str, Any]) -> dict[str, Any]:
    port = job["port"]
    headers = auth(job["token"])
    base = job.get("path") or (
        f"/api/v1/chat/conversations/{job['conversation_id']}/messages?limit={job['limit']}"
    )
    conn = await Conn.open(port)
    times: list[float] = []
    items = 0
    cursor: str | None = None
    error = None
    deadline = clock() + job.get("max_seconds", 300)
    paths: list[str] = []
    for _ in range(job["max_pages"]):
        if clock() > deadline:
            error = "time budget exhausted"
            break
        path = base + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        paths.append(path)
        t = clock()
        status, data = await asyncio.wait_for(conn.request("GET", path, headers), 30)
        times.append(clock() - t)
        if status != 200:
            error = f"status {status}: {data[:200]!r}"
            break
        page = json.loads(data)
        items += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    # The edges again, a first page and a last page in turn, so that both are timed in the
    # same moments: this machine's speed drifts over the seconds of a walk, which made the
    # walk's own first and last pages differ by up to 2x either way at equal cost.
    k = min(job.get("edge_pages", 0), len(paths) // 4)
    first_again: list[float] = []
    last_again: list[float] = []
    for _ in range(job.get("edge_rounds", 0) if error is None else 0):
        for a, b in zip(paths[:k], paths[-k:], strict=True):
            for path, into in ((a, first_again), (b, last_again)):
                t = clock()
                status, _ = await asyncio.wait_for(conn.request("GET", path, headers), 30)
                into.append(clock() - t)
                if status != 200:
                    error = f"status {status} on an edge page"
    conn.close()
    return {
        "pages": len(times),
        "items": items,
        "times": times,
        "error": error,
        "first_again": first_again,
        "last_again": last_again,
    }


MODES = {
    "ttft": ttft,
    "relay_ttft": relay_ttft,
    "streams": streams,
    "http": http_load,
    "stall": stall,
    "walk": walk,
}


def main() -> None:
    job = json.loads(sys.stdin.read())
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(MODES[job["mode"]](job))
    else:
        result = uvloop.run(MODES[job["mode"]](job))
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
