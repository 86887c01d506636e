"""The Anthropic Messages API, streamed through the official SDK."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2

from alice.core.errors import AIServiceUnavailableError
from alice.services.ai.base import AIProvider, ChatTurn, StreamEvent, TextDelta, Usage

if TYPE_CHECKING:
    from alice.core.config import Settings

log = logging.getLogger("alice.ai")

CONNECT_TIMEOUT_SECONDS = 5.0
# No cap on concurrent connections: every open stream holds one, and SPEC 11 wants streams
# bounded by memory, not by the client's pool (the SDK's default caps them at 1000).
# Idle keep-alive connections are a different matter: a few hundred are plenty.
CONNECTION_LIMITS = httpx2.Limits(max_connections=None, max_keepalive_connections=200)
_MAX_LOGGED_MESSAGE = 500


class _TruncatedStreamError(Exception):
    """The response ended without `message_stop`."""


class AnthropicProvider(AIProvider):
    """Claude through one `AsyncAnthropic` client, shared by every stream of the process."""

    name = "anthropic"

    def __init__(self, settings: Settings, *, max_retries: int = anthropic.DEFAULT_MAX_RETRIES):
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
            # The SDK's own client class keeps its defaults (TCP keep-alive, proxies from the
            # environment, redirects); only the pool limits change.
            http_client=anthropic.DefaultAsyncHttpxClient(
                limits=CONNECTION_LIMITS, timeout=timeout
            ),
        )

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        return self._client

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, system: str, messages: list[ChatTurn]) -> AsyncIterator[StreamEvent]:
        """Stream Claude's reply; see `AIProvider` for the contract."""
        params: dict[str, Any] = {
            "model": self._model,
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
            async with self._client.messages.stream(**params) as stream:
                request_id = stream.request_id
                try:
                    async for event in stream:
                        if completed:
                            continue  # nothing after message_stop counts
                        if event.type == "content_block_delta":
                            if event.delta.type == "text_delta" and event.delta.text:
                                yield TextDelta(event.delta.text)
                            continue
                        if event.type == "message_start":
                            usage = event.message.usage
                            input_tokens = usage.input_tokens or 0
                            output_tokens = usage.output_tokens or 0
                        elif event.type == "message_delta":
                            # Cumulative counts: assign, never add.
                            if event.usage.input_tokens is not None:
                                input_tokens = event.usage.input_tokens
                            output_tokens = event.usage.output_tokens
                        elif event.type == "message_stop":
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
