"""The AI providers: Anthropic through the real SDK against the fake API, the mock, the context."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import pytest

from alice.core.config import Settings
from alice.core.errors import AIServiceUnavailableError
from alice.services.ai import (
    AIProvider,
    ChatTurn,
    TextDelta,
    Usage,
    build_context,
    create_provider,
)
from alice.services.ai.anthropic import AnthropicProvider
from alice.services.ai.mock import MockProvider, mock_input_tokens, mock_reply
from tests.fakes.anthropic_server import (
    ABSOLUTE_FORM_HEADER,
    FakeAnthropicServer,
    RecordedRequest,
    expected_text,
    input_tokens_for,
    token_text,
)

API_KEY = "sk-ant-test-" + "S3CR3T" * 6
SYSTEM = "You are ALICE, a test assistant."


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "anthropic_api_key": API_KEY,
        "ai_model": "claude-test-model",
        "ai_max_tokens": 321,
        "ai_timeout_seconds": 5,
        "mock_token_delay_ms": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's client honours proxy variables: a proxy of the machine must not carry
    # the requests meant for the loopback fake.
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeAnthropicServer) -> AsyncIterator[AnthropicProvider]:
    p = AnthropicProvider(make_settings(anthropic_base_url=fake.base_url))
    yield p
    await p.aclose()


class Result:
    def __init__(self) -> None:
        self.events: list[TextDelta | Usage] = []
        self.error: AIServiceUnavailableError | None = None

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def deltas(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, TextDelta)]

    @property
    def usages(self) -> list[Usage]:
        return [e for e in self.events if isinstance(e, Usage)]


async def collect(provider: AIProvider, messages: list[ChatTurn] | str) -> Result:
    if isinstance(messages, str):
        messages = [ChatTurn("user", messages)]
    result = Result()
    try:
        async with contextlib.aclosing(provider.stream(SYSTEM, messages)) as stream:
            async for event in stream:
                result.events.append(event)
    except AIServiceUnavailableError as exc:
        result.error = exc
    return result


def tagged(markers: str = "") -> tuple[str, str]:
    """A message text unique to one test, so its requests can be told apart on the fake."""
    tag = uuid.uuid4().hex
    return tag, f"{tag} {markers}".strip()


def records(fake: FakeAnthropicServer, tag: str) -> list[RecordedRequest]:
    return fake.requests_with(tag)


# -- Anthropic: the normal stream ----------------------------------------------------------------


async def test_stream_yields_every_delta_and_the_reported_usage(
    fake: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    tag, text = tagged("[[tokens:7]]")
    history = [
        ChatTurn("user", "first question"),
        ChatTurn("assistant", "first answer"),
        ChatTurn("user", text),
    ]

    result = await collect(provider, history)

    assert result.error is None
    assert result.text == expected_text(7)
    assert result.deltas == [token_text(i) for i in range(7)]
    (record,) = records(fake, tag)
    assert record.reached_stop and not record.disconnected
    assert record.input_tokens == input_tokens_for(record.body) == 13
    assert result.usages[0] == Usage(13, 1)  # message_start
    assert record.output_tokens == 7
    assert result.usages[-1] == Usage(13, 7)  # what the fake reported
    body = record.body
    assert body["model"] == "claude-test-model"
    assert body["max_tokens"] == 321
    assert body["system"] == SYSTEM
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": text},
    ]
    # anthropic 2.x sends the api_key as a bearer token, not as x-api-key.
    assert record.api_key == API_KEY
    assert "anthropic-version" in record.headers


async def test_usage_is_yielded_only_when_it_changes(
    fake: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    _, text = tagged("[[tokens:1]]")
    result = await collect(provider, text)
    # message_start reports output 1, message_delta 1 too: nothing new to report.
    assert result.usages == [Usage(11, 1)]
    assert result.text == expected_text(1)


async def test_a_reply_of_no_text_ends_normally(
    fake: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    _, text = tagged("[[tokens:0]]")
    result = await collect(provider, text)
    assert result.error is None
    assert result.deltas == []
    assert result.usages[-1] == Usage(11, 0)


async def test_a_consumer_that_reads_to_the_end_lets_the_request_run_to_its_end(
    fake: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    tag, text = tagged("[[tokens:5]] [[delay:10]]")
    result = await collect(provider, text)
    assert result.text == expected_text(5)
    (record,) = records(fake, tag)
    assert record.reached_stop
    assert record.disconnected_at is None


async def test_a_failure_that_a_retry_heals_streams_normally(
    fake: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    tag, text = tagged("[[status:529:1]] [[tokens:3]]")
    result = await collect(provider, text)
    assert result.error is None
    assert result.text == expected_text(3)
    attempts = records(fake, tag)
    assert [(r.status, r.attempt) for r in attempts] == [(529, 0), (200, 1)]


# -- Anthropic: failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "exc_class", "attempts"),
    [
        (401, "authentication_error", anthropic.AuthenticationError, 1),
        (403, "permission_error", anthropic.PermissionDeniedError, 1),
        (429, "rate_limit_error", anthropic.RateLimitError, 3),
        (500, "api_error", anthropic.InternalServerError, 3),
        (529, "overloaded_error", anthropic.OverloadedError, 3),
    ],
)
async def test_an_error_status_before_the_stream_is_ai_service_unavailable(
    fake: FakeAnthropicServer,
    provider: AnthropicProvider,
    caplog: pytest.LogCaptureFixture,
    status: int,
    error_type: str,
    exc_class: type[anthropic.APIStatusError],
    attempts: int,
) -> None:
    tag, text = tagged(f"[[status:{status}]]")
    caplog.set_level(logging.WARNING, logger="alice.ai")

    result = await collect(provider, text)

    assert isinstance(result.error, AIServiceUnavailableError)
    assert isinstance(result.error.__cause__, exc_class)
    assert result.events == []
    # The SDK retried what is retryable (max_retries=2), before any token.
    seen = records(fake, tag)
    assert len(seen) == attempts
    assert all(r.status == status for r in seen)
    (log_record,) = [r for r in caplog.records if r.name == "alice.ai"]
    assert log_record.levelno == logging.WARNING
    message = log_record.getMessage()
    assert f"status={status}" in message
    assert f"type={error_type}" in message
    assert f"request_id={seen[-1].request_id}" in message


async def test_an_error_event_mid_stream_comes_after_the_tokens_before_it(
    fake: FakeAnthropicServer, provider: AnthropicProvider, caplog: pytest.LogCaptureFixture
) -> None:
    tag, text = tagged("[[tokens:6]] [[error_after:3]]")
    caplog.set_level(logging.WARNING, logger="alice.ai")

    result = await collect(provider, text)

    assert result.text == expected_text(3)
    assert isinstance(result.error, AIServiceUnavailableError)
    cause = result.error.__cause__
    # The SDK raises a plain APIStatusError with the 200 of the stream's response.
    assert type(cause) is anthropic.APIStatusError
    assert cause.status_code == 200
    assert cause.type == "overloaded_error"
    (record,) = records(fake, tag)
    assert len(records(fake, tag)) == 1  # an in-band error is never retried
    message = caplog.records[-1].getMessage()
    assert "status=200" in message and "type=overloaded_error" in message
    assert f"request_id={record.request_id}" in message


async def test_a_connection_dropped_mid_stream_is_ai_service_unavailable(
    fake: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    tag, text = tagged("[[tokens:6]] [[drop_after:2]]")
    result = await collect(provider, text)
    assert result.text == expected_text(2)
    assert isinstance(result.error, AIServiceUnavailableError)
    assert result.error.__cause__ is not None
    assert len(records(fake, tag)) == 1


async def test_a_stream_that_ends_without_message_stop_is_ai_service_unavailable(
    fake: FakeAnthropicServer, provider: AnthropicProvider, caplog: pytest.LogCaptureFixture
) -> None:
    _, text = tagged("[[tokens:6]] [[end_after:4]]")
    caplog.set_level(logging.WARNING, logger="alice.ai")
    result = await collect(provider, text)
    assert result.text == expected_text(4)
    assert isinstance(result.error, AIServiceUnavailableError)
    assert "type=truncated_stream" in caplog.records[-1].getMessage()


async def test_a_silent_provider_times_out_and_its_request_is_closed(
    fake: FakeAnthropicServer,
) -> None:
    tag, text = tagged("[[hang]]")
    provider = AnthropicProvider(
        make_settings(anthropic_base_url=fake.base_url, ai_timeout_seconds=0.3)
    )
    try:
        started = time.monotonic()
        result = await collect(provider, text)
    finally:
        await provider.aclose()
    assert time.monotonic() - started < 2
    assert isinstance(result.error, AIServiceUnavailableError)
    (record,) = records(fake, tag)
    assert await fake.until(lambda: record.disconnected, timeout=1)


async def test_an_unreachable_provider_is_ai_service_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    provider = AnthropicProvider(
        make_settings(anthropic_base_url=f"http://127.0.0.1:{port}"), max_retries=0
    )
    try:
        result = await collect(provider, "hello")
    finally:
        await provider.aclose()
    assert isinstance(result.error, AIServiceUnavailableError)
    assert isinstance(result.error.__cause__, anthropic.APIConnectionError)


# -- Anthropic: closing the request --------------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_provider_request_within_a_second(
    fake: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    tag, text = tagged("[[tokens:1000]] [[delay:50]]")
    result = Result()

    async def consume() -> None:
        async for event in provider.stream(SYSTEM, [ChatTurn("user", text)]):
            result.events.append(event)

    task = asyncio.create_task(consume())
    assert await fake.until(lambda: any(r.deltas_sent >= 2 for r in records(fake, tag)))
    task.cancel()
    cancelled_at = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task

    (record,) = records(fake, tag)
    assert await fake.until(lambda: record.disconnected, timeout=1)
    assert record.disconnected_at is not None
    assert record.disconnected_at - cancelled_at < 1
    assert not record.reached_stop
    assert result.text.startswith(token_text(0))


async def test_closing_the_generator_closes_the_provider_request_within_a_second(
    fake: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    tag, text = tagged("[[tokens:1000]] [[delay:20]]")
    stream = provider.stream(SYSTEM, [ChatTurn("user", text)])
    deltas = 0
    async for event in stream:
        if isinstance(event, TextDelta):
            deltas += 1
            if deltas == 3:
                break
    closed_at = time.monotonic()
    await stream.aclose()

    (record,) = records(fake, tag)
    assert await fake.until(lambda: record.disconnected, timeout=1)
    assert record.disconnected_at is not None
    assert record.disconnected_at - closed_at < 1
    assert not record.reached_stop


async def test_the_connection_pool_does_not_cap_concurrent_streams(
    fake: FakeAnthropicServer,
) -> None:
    tag, _ = tagged()
    n = 1010  # past the SDK default of 1000 connections
    peak_before = fake.peak_streams
    # Each stream waits 5 s between its two deltas (so all are open at once): the read
    # timeout must be well past that gap, or a busy loop turns the wait into a timeout.
    provider = AnthropicProvider(
        make_settings(anthropic_base_url=fake.base_url, ai_timeout_seconds=30)
    )

    async def one(i: int) -> Result:
        return await collect(provider, f"{tag} {i} [[tokens:2]] [[delay:5000]]")

    try:
        results = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await provider.aclose()

    assert all(r.error is None and r.text == expected_text(2) for r in results)
    assert len(records(fake, tag)) == n
    assert fake.peak_streams >= max(n, peak_before)


# -- Anthropic: secrets and configuration --------------------------------------------------------


async def test_the_api_key_never_appears_in_the_logs(
    fake: FakeAnthropicServer, provider: AnthropicProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and httpx2's included
    for markers in (
        "",
        "[[status:401]]",
        "[[status:500]]",
        "[[error_after:1]]",
        "[[drop_after:1]]",
    ):
        await collect(provider, tagged(markers)[1])
    unreachable = AnthropicProvider(
        make_settings(anthropic_base_url="http://127.0.0.1:9"), max_retries=0
    )
    await collect(unreachable, "hello")
    await unreachable.aclose()

    assert any(r.name == "alice.ai" for r in caplog.records)
    assert any(r.name.startswith("anthropic") for r in caplog.records)  # the SDK's debug too
    assert API_KEY not in caplog.text
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
        assert API_KEY not in str(record.args)


async def test_the_client_is_configured_from_the_settings(fake: FakeAnthropicServer) -> None:
    provider = AnthropicProvider(
        make_settings(anthropic_base_url=fake.base_url, ai_timeout_seconds=42)
    )
    try:
        client = provider.client
        assert client.api_key == API_KEY
        assert client.max_retries == 2
        assert str(client.base_url).rstrip("/") == fake.base_url
        timeout = client.timeout
        assert isinstance(timeout, anthropic.Timeout)
        assert timeout.read == 42 and timeout.connect == 5
    finally:
        await provider.aclose()


async def test_without_a_base_url_the_sdk_reads_anthropic_base_url(
    fake: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(anthropic_base_url=None)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
    provider = AnthropicProvider(settings)
    try:
        tag, text = tagged("[[tokens:2]]")
        result = await collect(provider, text)
    finally:
        await provider.aclose()
    assert result.text == expected_text(2)
    assert len(records(fake, tag)) == 1


async def test_proxies_from_the_environment_are_honoured(
    fake: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake stands in for the proxy: it accepts the absolute URI a proxy is sent.
    monkeypatch.setenv("HTTP_PROXY", fake.base_url)
    provider = AnthropicProvider(make_settings(anthropic_base_url="http://api.anthropic.invalid"))
    try:
        tag, text = tagged("[[tokens:2]]")
        result = await collect(provider, text)
    finally:
        await provider.aclose()
    assert result.error is None
    assert result.text == expected_text(2)
    (record,) = records(fake, tag)
    assert record.headers.get(ABSOLUTE_FORM_HEADER) == "1"
    assert record.headers["host"] == "api.anthropic.invalid"


async def test_create_provider_picks_anthropic_with_a_key_and_the_mock_without() -> None:
    with_key = create_provider(make_settings())
    without_key = create_provider(make_settings(anthropic_api_key=None))
    empty_key = create_provider(make_settings(anthropic_api_key=""))
    try:
        assert isinstance(with_key, AnthropicProvider)
        assert isinstance(without_key, MockProvider)
        assert isinstance(empty_key, MockProvider)
    finally:
        for p in (with_key, without_key, empty_key):
            await p.aclose()


# -- The mock ------------------------------------------------------------------------------------


async def test_the_mock_streams_a_deterministic_reply_word_by_word() -> None:
    provider = MockProvider(make_settings(anthropic_api_key=None))
    messages = [
        ChatTurn("user", "hi there"),
        ChatTurn("assistant", "hello"),
        ChatTurn("user", "What is   the weather like?"),
    ]

    first = await collect(provider, messages)
    second = await collect(provider, messages)

    assert first.events == second.events
    assert first.error is None
    expected = "Hello! I am ALICE, running in mock mode. You said: What is the weather like?"
    assert first.text == expected == mock_reply(messages)
    assert first.deltas == [w + " " for w in expected.split()[:-1]] + ["like?"]
    assert all(d.strip() and len(d.split()) == 1 for d in first.deltas)
    input_tokens = mock_input_tokens(SYSTEM, messages)
    assert input_tokens == len(SYSTEM.split()) + 2 + 1 + 5
    assert first.usages == [Usage(input_tokens, 0), Usage(input_tokens, len(first.deltas))]
    assert first.events[0] == Usage(input_tokens, 0)
    assert first.events[-1] == Usage(input_tokens, len(first.deltas))


async def test_the_mock_echoes_at_most_twenty_words() -> None:
    provider = MockProvider(make_settings(anthropic_api_key=None))
    words = [f"w{i}" for i in range(30)]
    result = await collect(provider, " ".join(words))
    assert result.text.endswith("You said: " + " ".join(words[:20]) + " ...")


async def test_the_mock_waits_its_delay_between_words() -> None:
    provider = MockProvider(make_settings(anthropic_api_key=None, mock_token_delay_ms=20))
    started = time.monotonic()
    result = await collect(provider, "one two")
    elapsed = time.monotonic() - started
    assert elapsed >= (len(result.deltas) - 1) * 0.02 * 0.9


async def test_the_mock_without_delay_still_yields_to_the_event_loop() -> None:
    provider = MockProvider(make_settings(anthropic_api_key=None, mock_token_delay_ms=0))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    before = ticks
    result = await collect(provider, "one two three")
    ticker.cancel()
    assert ticks - before >= len(result.deltas) - 1


# -- The context ---------------------------------------------------------------------------------


def test_context_keeps_at_most_the_limit_of_earlier_messages_plus_the_new_one() -> None:
    history = [("user" if i % 2 == 0 else "assistant", f"m{i}", "complete") for i in range(10)]
    history.append(("user", "new", "complete"))  # m0..m9, then the new message

    turns = build_context(history, max_messages=5)

    # m5..m9 and the new one; m5 (an assistant turn) cannot start the context.
    assert turns == [
        ChatTurn("user", "m6"),
        ChatTurn("assistant", "m7"),
        ChatTurn("user", "m8"),
        ChatTurn("assistant", "m9"),
        ChatTurn("user", "new"),
    ]
    assert build_context(history, max_messages=4)[0] == ChatTurn("user", "m6")
    assert len(build_context(history, max_messages=100)) == 11
    assert build_context(history, max_messages=0) == [ChatTurn("user", "new")]


def test_context_leaves_out_streaming_and_empty_messages() -> None:
    history = [
        ("user", "q1", "complete"),
        ("assistant", "partial", "streaming"),
        ("assistant", "   \n", "incomplete"),
        ("assistant", "", "complete"),
        ("assistant", "a1", "stopped"),
        ("user", "q2", "complete"),
    ]
    assert build_context(history, max_messages=40) == [
        ChatTurn("user", "q1"),
        ChatTurn("assistant", "a1"),
        ChatTurn("user", "q2"),
    ]


def test_context_limit_counts_only_messages_that_are_kept() -> None:
    history = [
        ("user", "q1", "complete"),
        ("assistant", "a1", "complete"),
        ("assistant", "", "complete"),
        ("assistant", "x", "streaming"),
        ("user", "q2", "complete"),
    ]
    # The left-out messages do not use up the limit: q1 and a1 are the 2 earlier messages.
    assert build_context(history, max_messages=2) == [
        ChatTurn("user", "q1"),
        ChatTurn("assistant", "a1"),
        ChatTurn("user", "q2"),
    ]
    # With 1, a1 is the one kept, and an assistant turn cannot start the context.
    assert build_context(history, max_messages=1) == [ChatTurn("user", "q2")]


def test_context_starts_with_a_user_turn() -> None:
    history = [
        ("assistant", "greeting", "complete"),
        ("assistant", "more", "complete"),
        ("user", "hi", "complete"),
    ]
    assert build_context(history, max_messages=40) == [ChatTurn("user", "hi")]


def test_context_joins_consecutive_messages_of_one_role_in_order() -> None:
    history = [
        ("user", "q1", "complete"),
        ("user", "q1 again", "complete"),  # the reply to q1 failed before any text
        ("assistant", "a1", "complete"),
        ("assistant", "a1 cont", "stopped"),
        ("user", "q2", "complete"),
        ("user", "q3", "complete"),
    ]
    assert build_context(history, max_messages=40) == [
        ChatTurn("user", "q1\n\nq1 again"),
        ChatTurn("assistant", "a1\n\na1 cont"),
        ChatTurn("user", "q2\n\nq3"),
    ]


def test_context_of_nothing_is_empty() -> None:
    assert build_context([], max_messages=40) == []
    assert build_context([("assistant", "x", "streaming")], max_messages=40) == []
