"""A fake Anthropic Messages API: a real HTTP/1.1 server on a loopback port.

It speaks the streaming protocol of `POST /v1/messages` (`stream: true`) the way the API does:
`message_start`, `content_block_start`, `ping`, one `content_block_delta` (`text_delta`) per
token, `content_block_stop`, `message_delta` (stop reason, cumulative `output_tokens`),
`message_stop`, over chunked transfer encoding with keep-alive. So the official SDK is what
tests exercise, with its retries, its error classes and its way of closing a response.

Markers in the text of the LAST user message drive each request:

    [[tokens:N]]          N text deltas (default DEFAULT_TOKENS); delta i is token_text(i)
    [[delay:MS]]          MS milliseconds between two deltas (default 0)
    [[latency:MS]]        MS milliseconds before the response headers
    [[hang]]              send message_start, then nothing; keep the connection open
    [[status:CODE]]       answer CODE with the API's error JSON instead of a stream
    [[status:CODE:N]]     ... only for the first N attempts (the SDK's x-stainless-retry-count),
                          then stream normally: a failure that a retry heals
    [[error_after:K]]     after K deltas, an in-band `event: error` (overloaded_error) and the end
    [[error_after:K:T]]   ... with error type T (api_error, rate_limit_error, ...)
    [[drop_after:K]]      after K deltas, close the TCP connection mid-body (no message_stop)
    [[end_after:K]]       after K deltas, end the HTTP body cleanly but without message_stop
    [[pings:MS]]          while waiting between deltas, a `ping` event every MS milliseconds
                          (bytes keep coming, events do not: as the API does)

Usage is deterministic: `input_tokens_for(body)` in `message_start`, `output_tokens` = the
number of deltas in `message_delta` (message_start reports 1, as the API does).

In a test, run it in a background thread:

    with FakeAnthropicServer() as fake:
        ... AsyncAnthropic(base_url=fake.base_url, api_key="test-key") ...
        record = fake.requests[-1]        # RecordedRequest: body, headers, timings, outcome

Standalone (benchmarks): `python tests/fakes/anthropic_server.py --port 8001`; then
`GET /_fake/stats` gives counters and `GET /_fake/requests` the recent records as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_TOKENS = 5
INPUT_TOKENS_BASE = 10
STREAM_START_OUTPUT_TOKENS = 1
DEFAULT_ERROR_AFTER_TYPE = "overloaded_error"

# The API's error type and message for each status it answers before a stream.
ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error."),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}
ERROR_EVENT_MESSAGES = {
    "overloaded_error": "Overloaded",
    "api_error": "Internal server error.",
    "rate_limit_error": "Rate limited.",
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}
# Set among a record's headers when the request line carried an absolute URI (via a proxy).
ABSOLUTE_FORM_HEADER = "x-fake-absolute-form"
_MARKER = re.compile(r"\[\[([a-z_]+)(?::([^\]]*))?\]\]")


def token_text(i: int) -> str:
    """The text of delta `i`."""
    return f"tok{i} "


def expected_text(n: int = DEFAULT_TOKENS) -> str:
    """The full text of a reply of `n` deltas."""
    return "".join(token_text(i) for i in range(n))


def input_tokens_for(body: dict[str, Any]) -> int:
    """The `input_tokens` the fake reports for a request body: 10 + its number of messages."""
    return INPUT_TOKENS_BASE + len(body.get("messages") or [])


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message of a request body ("" if none)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(
                    b.get("text", "")
                    for b in content
                    if isinstance(b, dict) and b.get("type") == "text"
                )
            return ""
    return ""


@dataclass
class Markers:
    tokens: int = DEFAULT_TOKENS
    delay_ms: float = 0
    latency_ms: float = 0
    hang: bool = False
    status: int | None = None
    status_attempts: int | None = None  # None: every attempt fails
    error_after: int | None = None
    error_type: str = DEFAULT_ERROR_AFTER_TYPE
    drop_after: int | None = None
    end_after: int | None = None
    pings_ms: float = 0


def parse_markers(text: str) -> Markers:
    """The markers of a message text; unknown or malformed markers are ignored."""
    m = Markers()
    for name, arg in _MARKER.findall(text):
        parts = arg.split(":") if arg else []
        try:
            if name == "tokens":
                m.tokens = max(int(parts[0]), 0)
            elif name == "delay":
                m.delay_ms = float(parts[0])
            elif name == "latency":
                m.latency_ms = float(parts[0])
            elif name == "hang":
                m.hang = True
            elif name == "status":
                m.status = int(parts[0])
                m.status_attempts = int(parts[1]) if len(parts) > 1 else None
            elif name == "error_after":
                m.error_after = int(parts[0])
                if len(parts) > 1 and parts[1]:
                    m.error_type = parts[1]
            elif name == "drop_after":
                m.drop_after = int(parts[0])
            elif name == "end_after":
                m.end_after = int(parts[0])
            elif name == "pings":
                m.pings_ms = max(float(parts[0]), 0)
        except (IndexError, ValueError):
            continue
    return m


@dataclass
class RecordedRequest:
    """One request as the fake saw it. Times are `time.monotonic()` of this process."""

    index: int
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    started_at: float
    body: Any = None  # the parsed JSON body (None if it was not JSON)
    markers: Markers = field(default_factory=Markers)
    attempt: int = 0  # the SDK's x-stainless-retry-count
    status: int | None = None
    stream: bool = False
    request_id: str = ""
    input_tokens: int | None = None  # usage the fake reported
    output_tokens: int | None = None
    deltas_sent: int = 0
    reached_stop: bool = False  # message_stop was written: the request ran to its end
    disconnected_at: float | None = None  # the client closed before the end
    ended_at: float | None = None  # the fake is done with it, whatever the outcome

    @property
    def finished(self) -> bool:
        return self.ended_at is not None

    @property
    def disconnected(self) -> bool:
        return self.disconnected_at is not None

    @property
    def api_key(self) -> str | None:
        """The key presented: `x-api-key`, or the bearer token (anthropic 2.x sends its api_key
        as `Authorization: Bearer`)."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    @property
    def last_user_text(self) -> str:
        return last_user_text(self.body) if isinstance(self.body, dict) else ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Disconnected(Exception):
    pass


class FakeAnthropicServer:
    """The fake API. `start()`/`stop()` (or `with`) run it in a thread of its own."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        retry_after_ms: float | None = 1.0,
        max_records: int | None = None,
    ) -> None:
        """`api_key`: when set, any other key is a 401 (a request with no key always is);
        the key is read from `x-api-key` or `Authorization: Bearer`.

        `retry_after_ms`: sent as `retry-after-ms` on retryable errors (429, 5xx), so the SDK's
        retries take about that long instead of its 0.5 s+ backoff; None leaves it out
        (429 always carries `retry-after: 0`, which the SDK treats as "use the backoff").
        """
        self.host = host
        self.port = port
        self.api_key = api_key
        self.retry_after_ms = retry_after_ms
        self._records: collections.deque[RecordedRequest] = collections.deque(maxlen=max_records)
        self._lock = threading.Lock()
        self._count = 0
        self.active_streams = 0
        self.peak_streams = 0
        self.completed_streams = 0
        self.disconnected_streams = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start_async(self) -> None:
        """Listen in the running event loop (standalone use)."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, backlog=4096, limit=1 << 22
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def start(self) -> FakeAnthropicServer:
        """Start listening in a background thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.aclose())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-anthropic", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeAnthropicServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests read ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._records)

    def requests_with(self, text: str) -> list[RecordedRequest]:
        """The records whose last user message contains `text` (tag each test's messages)."""
        return [r for r in self.requests if text in r.last_user_text]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate` from any thread until it is true (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """`wait_for` for async tests: polls without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """The records once at least `count` requests arrived (AssertionError on timeout)."""
        if not await self.until(lambda: len(self.requests) >= count, timeout):
            raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
        return self.requests

    def stats(self) -> dict[str, int]:
        return {
            "requests": self._count,
            "active_streams": self.active_streams,
            "peak_streams": self.peak_streams,
            "completed_streams": self.completed_streams,
            "disconnected_streams": self.disconnected_streams,
        }

    # -- HTTP --------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                if not await self._respond(*request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ValueError:  # not HTTP: close the connection
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()  # flushes what was written (a drop's last deltas), then closes

    async def _respond(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        raw_body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; False when the connection must close."""
        keep_alive = headers.get("connection", "").lower() != "close"
        route = path.split("?", 1)[0]
        if method == "GET" and route in ("/_fake/stats", "/_fake/requests"):
            data: Any = (
                self.stats()
                if route == "/_fake/stats"
                else [r.as_dict() for r in self.requests[-100:]]
            )
            _write_json(writer, 200, data, {})
            await writer.drain()
            return keep_alive

        self._count += 1
        record = RecordedRequest(
            index=self._count - 1,
            method=method,
            path=path,
            headers=headers,
            started_at=time.monotonic(),
            request_id=f"req_fake_{self._count:06d}",
        )
        with contextlib.suppress(ValueError):
            record.attempt = int(headers.get("x-stainless-retry-count", "0"))
        with self._lock:
            self._records.append(record)
        try:
            return await self._serve(record, raw_body, keep_alive, reader, writer)
        finally:
            record.ended_at = time.monotonic()

    async def _serve(
        self,
        record: RecordedRequest,
        raw_body: bytes,
        keep_alive: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if record.method != "POST" or record.path.split("?", 1)[0] != "/v1/messages":
            self._error(writer, record, 404)
            await writer.drain()
            return keep_alive
        try:
            record.body = json.loads(raw_body)
            if not isinstance(record.body, dict):
                raise ValueError("not an object")
        except ValueError:
            self._error(writer, record, 400, "The request body is not valid JSON.")
            await writer.drain()
            return keep_alive
        key = record.api_key
        if key is None or (self.api_key is not None and key != self.api_key):
            self._error(writer, record, 401)
            await writer.drain()
            return keep_alive

        body: dict[str, Any] = record.body
        markers = record.markers = parse_markers(last_user_text(body))
        if markers.latency_ms:
            await asyncio.sleep(markers.latency_ms / 1000)
        if markers.status is not None and (
            markers.status_attempts is None or record.attempt < markers.status_attempts
        ):
            self._error(writer, record, markers.status)
            await writer.drain()
            return keep_alive

        record.input_tokens = input_tokens_for(body)
        record.stream = bool(body.get("stream"))
        if not record.stream:
            record.status = 200
            record.output_tokens = markers.tokens
            message = _message(record, body, content=expected_text(markers.tokens))
            message["stop_reason"] = "end_turn"
            message["usage"]["output_tokens"] = markers.tokens
            _write_json(writer, 200, message, {"request-id": record.request_id})
            await writer.drain()
            record.reached_stop = True
            return keep_alive

        self.active_streams += 1
        self.peak_streams = max(self.peak_streams, self.active_streams)
        # A read pending for the whole stream: it ends with EOF (or a reset) the moment the
        # client closes the request, whatever the stream is doing, even hanging.
        watcher = asyncio.ensure_future(reader.read(65536))
        clean = False
        try:
            await self._stream(record, body, markers, writer, watcher)
            # A drop closes the connection; so does a client that sent bytes mid-stream.
            clean = not watcher.done() and not writer.is_closing()
        except (_Disconnected, ConnectionError):
            if record.disconnected_at is None:
                record.disconnected_at = time.monotonic()
            self.disconnected_streams += 1
        finally:
            self.active_streams -= 1
            watcher.cancel()
            # The reader takes one waiter at a time: let the cancelled read finish before the
            # next request is read from this connection.
            await asyncio.wait({watcher})
            if not watcher.cancelled():
                watcher.exception()  # retrieved, so asyncio does not log it
        if record.reached_stop:
            self.completed_streams += 1
        return keep_alive and clean

    async def _stream(
        self,
        record: RecordedRequest,
        body: dict[str, Any],
        markers: Markers,
        writer: asyncio.StreamWriter,
        watcher: asyncio.Future[bytes],
    ) -> None:
        record.status = 200
        writer.write(
            _head(
                200,
                {
                    "content-type": "text/event-stream; charset=utf-8",
                    "cache-control": "no-cache",
                    "transfer-encoding": "chunked",
                    "request-id": record.request_id,
                },
            )
        )

        async def send(event: str, data: dict[str, Any]) -> None:
            if watcher.done():
                _client_gone(record, watcher)
            payload = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
            writer.write(_chunk(payload.encode()))
            await writer.drain()

        async def pause(seconds: float | None) -> None:
            """Wait, noticing at once a client that goes away (None: wait for that only)."""
            done, _ = await asyncio.wait({watcher}, timeout=seconds)
            if done:
                _client_gone(record, watcher)

        async def end_body() -> None:
            writer.write(b"0\r\n\r\n")
            await writer.drain()

        record.output_tokens = STREAM_START_OUTPUT_TOKENS
        message = _message(record, body, content=None)
        message["usage"]["output_tokens"] = STREAM_START_OUTPUT_TOKENS
        await send("message_start", {"type": "message_start", "message": message})
        if markers.hang:
            await pause(None)
            return
        await send(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        await send("ping", {"type": "ping"})
        delay = markers.delay_ms / 1000
        for i in range(markers.tokens + 1):
            if markers.error_after == i:
                error_type = markers.error_type
                error = {
                    "type": error_type,
                    "message": ERROR_EVENT_MESSAGES.get(error_type, "Error"),
                }
                await send("error", {"type": "error", "error": error})
                await end_body()
                return
            if markers.drop_after == i:
                await writer.drain()
                # Closed mid-body: no terminating chunk, so the client sees a truncated read.
                writer.close()
                return
            if markers.end_after == i:
                await end_body()
                return
            if i == markers.tokens:
                break
            if i and delay:
                if markers.pings_ms:
                    waited, every = 0.0, markers.pings_ms / 1000
                    while waited + every < delay:
                        await pause(every)
                        waited += every
                        await send("ping", {"type": "ping"})
                    await pause(delay - waited)
                else:
                    await pause(delay)
            await send(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": token_text(i)},
                },
            )
            record.deltas_sent += 1
            if not delay and i % 16 == 15:
                await asyncio.sleep(0)  # let the watcher see a disconnect in a long burst
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        record.output_tokens = markers.tokens
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": markers.tokens},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        record.reached_stop = True
        await end_body()

    def _error(
        self, writer: asyncio.StreamWriter, record: RecordedRequest, status: int, msg: str = ""
    ) -> None:
        error_type, default_message = ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error.")
        )
        body = {
            "type": "error",
            "error": {"type": error_type, "message": msg or default_message},
            "request_id": record.request_id,
        }
        headers = {"request-id": record.request_id}
        if status == 429:
            headers["retry-after"] = "0"
        if self.retry_after_ms is not None and (status == 429 or status >= 500):
            headers["retry-after-ms"] = f"{self.retry_after_ms:g}"
        record.status = status
        _write_json(writer, status, body, headers)


def _client_gone(record: RecordedRequest, watcher: asyncio.Future[bytes]) -> None:
    """The watcher finished: EOF or a reset means the client closed the request."""
    data = b""
    if not watcher.cancelled() and watcher.exception() is None:
        data = watcher.result()
    if data:
        return  # bytes from the client (nothing should send any mid-stream): not a close
    record.disconnected_at = time.monotonic()
    raise _Disconnected


def _message(record: RecordedRequest, body: dict[str, Any], content: str | None) -> dict[str, Any]:
    return {
        "id": f"msg_fake_{record.index:06d}",
        "type": "message",
        "role": "assistant",
        "content": [] if content is None else [{"type": "text", "text": content}],
        "model": body.get("model", "claude-fake"),
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": record.input_tokens, "output_tokens": 0},
    }


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _write_json(
    writer: asyncio.StreamWriter, status: int, data: Any, headers: dict[str, str]
) -> None:
    payload = json.dumps(data).encode()
    all_headers = {
        "content-type": "application/json",
        "content-length": str(len(payload)),
        **headers,
    }
    writer.write(_head(status, all_headers) + payload)


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    """One request off the connection, or None when the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    # The absolute form, as sent to a proxy: the fake can stand in for an HTTP proxy too.
    if path.startswith(("http://", "https://")):
        path = "/" + path.split("://", 1)[1].partition("/")[2]
        headers_absolute = True
    else:
        headers_absolute = False
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers_absolute:
        headers[ABSOLUTE_FORM_HEADER] = "1"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path, headers, body


def _raise_open_file_limit() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


async def _serve_forever(server: FakeAnthropicServer) -> None:
    await server.start_async()
    print(f"fake Anthropic API listening on {server.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.aclose()


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Anthropic Messages API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--api-key", default=None, help="refuse any other key with a 401")
    parser.add_argument("--max-records", type=int, default=1000, help="records kept in memory")
    args = parser.parse_args(list(argv) if argv is not None else None)
    _raise_open_file_limit()
    server = FakeAnthropicServer(
        args.host, args.port, api_key=args.api_key, max_records=args.max_records
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(server))


if __name__ == "__main__":
    main()
