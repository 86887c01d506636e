"""AI providers: the Anthropic Messages API, or a mock when no API key is set."""

from alice.services.ai.base import (
    AIProvider,
    ChatTurn,
    StreamEvent,
    TextDelta,
    Usage,
    create_provider,
)
from alice.services.ai.context import build_context

__all__ = [
    "AIProvider",
    "ChatTurn",
    "StreamEvent",
    "TextDelta",
    "Usage",
    "build_context",
    "create_provider",
]
