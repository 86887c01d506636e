"""The AI provider contract: what a reply stream yields and how it fails."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ChatTurn:
    """One turn of the conversation sent to the provider."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply's text, never empty."""

    text: str


@dataclass(frozen=True)
class Usage:
    """The token counts so far; each one replaces the previous (cumulative, never summed)."""

    input_tokens: int
    output_tokens: int


StreamEvent = TextDelta | Usage


class AIProvider(abc.ABC):
    """Streams a reply from a model.

    `stream()` is an async generator that yields a `TextDelta` per text delta of the provider
    and a `Usage` whenever the counts change. It returns normally only when the provider said
    the message is complete; any failure (connection, timeout, an error status, an in-band
    `error` event, a stream cut short) raises `AIServiceUnavailableError` from the real cause,
    which is logged on the `alice.ai` logger. Cancelling the consumer, or `aclose()` on the
    generator, closes the request to the provider. Consume it with `contextlib.aclosing` so an
    early exit closes the request at once, not when the generator is garbage-collected.
    """

    name: str = "provider"

    @abc.abstractmethod
    def stream(
        self, system: str, messages: list[ChatTurn], model: str | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream the reply to `messages` (starting with a user turn) under `system`, from
        `model` (None: ALICE_AI_MODEL)."""

    async def aclose(self) -> None:  # noqa: B027 - a provider without resources has nothing to do
        """Release the provider's resources (its HTTP client)."""
