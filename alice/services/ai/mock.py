"""A provider with no network: a deterministic reply, streamed word by word."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from alice.services.ai.base import AIProvider, ChatTurn, StreamEvent, TextDelta, Usage

if TYPE_CHECKING:
    from alice.core.config import Settings

MOCK_GREETING = "Hello! I am ALICE, running in mock mode."
ECHO_WORDS = 20
_WORD = re.compile(r"\S+\s*")


def mock_reply(messages: list[ChatTurn], model: str | None = None) -> str:
    """The mock's reply: the greeting (naming `model` when one other than the default was
    chosen), then the first words of the last user message."""
    greeting = MOCK_GREETING if model is None else f"{MOCK_GREETING[:-1]} as {model}."
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    words = last_user.split()
    if not words:
        return greeting
    echoed = " ".join(words[:ECHO_WORDS]) + (" ..." if len(words) > ECHO_WORDS else "")
    return f"{greeting} You said: {echoed}"


def mock_tokens(text: str) -> list[str]:
    """The text cut into deltas: each word with the spaces after it, so they join back to it."""
    return _WORD.findall(text)


def mock_input_tokens(system: str, messages: list[ChatTurn]) -> int:
    """The mock's input count: the words of the system prompt and of every turn."""
    return len(system.split()) + sum(len(m.content.split()) for m in messages)


class MockProvider(AIProvider):
    """Streams `mock_reply(messages)` one word at a time, `ALICE_MOCK_TOKEN_DELAY_MS` apart."""

    name = "mock"

    def __init__(self, settings: Settings) -> None:
        self._delay = max(settings.mock_token_delay_ms, 0) / 1000
        self._default_model = settings.ai_model_list[0]

    async def stream(
        self, system: str, messages: list[ChatTurn], model: str | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream the deterministic reply; see `AIProvider` for the contract."""
        input_tokens = mock_input_tokens(system, messages)
        yield Usage(input_tokens, 0)
        deltas = 0
        named = None if model in (None, self._default_model) else model
        for token in mock_tokens(mock_reply(messages, named)):
            # Give the loop a turn even with no delay, as a network read would.
            await asyncio.sleep(self._delay if deltas else 0)
            deltas += 1
            yield TextDelta(token)
        yield Usage(input_tokens, deltas)
