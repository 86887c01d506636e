"""The Anthropic Messages API, streamed through the official SDK."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2

from alice.core.errors import AIServiceUnavailableError
from alice.services.ai.base import AIProvider, ChatTurn, StreamEvent, TextDelta, Usage

if TYPE_CHECKING:
    from alice.core.config import Settings

log = logging.getLogger("alice.ai")

CONNECT_TIMEOUT_SECONDS = 5.0
# The SDK's aiohttp transport (`anthropic[aiohttp]`, `DefaultAioHttpClient`): reading a
# stream through it costs about half the CPU per event of the default httpx transport
# (65-69 µs against 124-148 µs, 200 streams × 100 events against the fake), and its pool
# (aiohttp's connector) does not walk every connection when a request starts or ends, which
# the default pool did (O(n²) for n streams: it took 32 pools to keep that in bounds).
# SPEC 11: no cap on connections. The transport hands `max_connections` to aiohttp's
# connector as its `limit`, where 0 means none (None would leave aiohttp's default of 100).
UNCAPPED = httpx2.Limits(max_connections=0, max_keepalive_connections=None, keepalive_expiry=5.0)
_MAX_LOGGED_MESSAGE = 500


class _TruncatedStreamError(Exception):
    """The response ended without `message_stop`."""


class AnthropicProvider(AIProvider):
    """Claude through one `AsyncAnthropic` client, shared by every stream of the process."""

    name = "anthropic"

    def __init__(
        self,
        settings: Settings,
        *,
        max_retries: int = anthropic.DEFAULT_MAX_RETRIES,
        on_error: Callable[[str], None] | None = None,
    ):
        # Called with the cause of each failed request (the `type` logged: an API error type
        # such as "overloaded_error", or "timeout", "connection_error", "truncated_stream",
        # "unknown"): the metrics' alice_ai_errors_total{cause}.
        self._on_error = on_error
        if settings.anthropic_api_key is None:
            raise ValueError("AnthropicProvider needs ANTHROPIC_API_KEY")
        self._api_key = settings.anthropic_api_key.get_secret_value()
        self._model = settings.ai_model
        self._max_tokens = settings.ai_max_tokens
        # anthropic 2.x runs on `httpx2`: its Timeout and client must come from there
        # (`anthropic.Timeout` is `httpx2.Timeout`; an `httpx` object is refused with a TypeError).
        # For a stream the read timeout is the longest wait between two chunks.
        timeout = anthropic.Timeout(settings.ai_timeout_seconds, connect=CONNECT_TIMEOUT_SECONDS)
        self._client = anthropic.AsyncAnthropic(
            api_key=self._api_key,
            # None lets the SDK apply ANTHROPIC_BASE_URL itself, then its default.
            base_url=settings.anthropic_base_url or None,
            timeout=timeout,
            # Retries cover only the initial response, so never a token already streamed.
            max_retries=max_retries,
            # The SDK's own aiohttp client: its timeout, redirects and proxies from the
            # environment, with a pool that does not cap the number of streams.
            http_client=anthropic.DefaultAioHttpClient(timeout=timeout, limits=UNCAPPED),
        )

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        return self._client

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(
        self, system: str, messages: list[ChatTurn], model: str | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream Claude's reply; see `AIProvider` for the contract."""
        params: dict[str, Any] = {
            "model": model or self._model,
            "max_tokens": self._max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
        }
        if system:
            params["system"] = system
        request_id: str | None = None
        completed = False
        input_tokens = output_tokens = 0
        reported: Usage | None = None
        try:
            # `async with` closes the HTTP response on every exit: normal end, error,
            # CancelledError and GeneratorExit (aclose) alike, so the provider sees the
            # request closed as soon as the consumer goes away.
            # The SDK's request (its headers, retries, status errors) and stream (its SSE
            # decoding, in-band `error` events), with each event left as the JSON object it
            # came as: `client.post(cast_to=object)`, the SDK's own way to a raw result.
            # `messages.create(stream=True)` builds a typed object per event, and
            # `messages.stream()` a snapshot of the message besides: that was half of the
            # CPU of a token, for fields we do not read.
            stream = await self._client.post(
                "/v1/messages",
                body={**params, "stream": True},
                cast_to=object,
                stream=True,
                stream_cls=anthropic.AsyncStream[object],
            )
            async with stream:
                request_id = stream.response.headers.get("request-id")
                try:
                    async for raw in stream:
                        if completed:
                            continue  # nothing after message_stop counts
                        event: dict[str, Any] = raw  # type: ignore[assignment]
                        kind = event.get("type")
                        if kind == "content_block_delta":
                            delta = event["delta"]
                            if delta.get("type") == "text_delta" and delta.get("text"):
                                yield TextDelta(delta["text"])
                            continue
                        if kind == "message_start":
                            usage = event["message"]["usage"]
                            input_tokens = usage.get("input_tokens") or 0
                            output_tokens = usage.get("output_tokens") or 0
                        elif kind == "message_delta":
                            # Cumulative counts: assign, never add.
                            usage = event["usage"]
                            if usage.get("input_tokens") is not None:
                                input_tokens = usage["input_tokens"]
                            output_tokens = usage.get("output_tokens") or 0
                        elif kind == "message_stop":
                            completed = True
                        else:
                            continue
                        current = Usage(input_tokens, output_tokens)
                        if current != reported:
                            reported = current
                            yield current
                except Exception as exc:
                    if not completed:
                        raise
                    # The message was complete; only the end of the body went wrong.
                    log.debug("AI provider stream failed after message_stop: %r", exc)
                if not completed:
                    raise _TruncatedStreamError("the stream ended without message_stop")
        except Exception as exc:
            self._log_failure(exc, request_id)
            raise AIServiceUnavailableError() from exc

    def _log_failure(self, exc: Exception, request_id: str | None) -> None:
        status: int | None = None
        error_type: str | None = None
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            error_type = exc.type  # also set for an in-band `error` event, whose status is 200
            request_id = exc.request_id or request_id
        elif isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
            error_type = "timeout"
        elif isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
            error_type = "connection_error"
        elif isinstance(exc, _TruncatedStreamError):
            status = 200
            error_type = "truncated_stream"
        if self._on_error is not None:
            try:
                self._on_error(error_type or "unknown")
            except Exception:  # noqa: BLE001 - counting must never change the failure
                log.debug("on_error callback failed", exc_info=True)
        known = isinstance(exc, anthropic.APIError | httpx2.HTTPError | _TruncatedStreamError)
        message = self._redact(str(exc))[:_MAX_LOGGED_MESSAGE]
        log.warning(
            "AI provider request failed: status=%s type=%s request_id=%s exception=%s: %s",
            status,
            error_type or "unknown",
            request_id,
            type(exc).__name__,
            message,
            # A failure we do not recognise may be a bug: keep its traceback.
            exc_info=None if known else exc,
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "[REDACTED]") if self._api_key else text
