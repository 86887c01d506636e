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


def mock_reply(messages: list[ChatTurn]) -> str:
    """The mock's reply: the greeting, then the first words of the last user message."""
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    words = last_user.split()
    if not words:
        return MOCK_GREETING
    echoed = " ".join(words[:ECHO_WORDS]) + (" ..." if len(words) > ECHO_WORDS else "")
    return f"{MOCK_GREETING} You said: {echoed}"


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

    async def stream(
        self, system: str, messages: list[ChatTurn]
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream the deterministic reply; see `AIProvider` for the contract."""
        input_tokens = mock_input_tokens(system, messages)
        yield Usage(input_tokens, 0)
        deltas = 0
        for token in mock_tokens(mock_reply(messages)):
            # Give the loop a turn even with no delay, as a network read would.
            await asyncio.sleep(self._delay if deltas else 0)
            deltas += 1
            yield TextDelta(token)
        yield Usage(input_tokens, deltas)
