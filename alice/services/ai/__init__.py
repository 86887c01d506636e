"""AI providers: the Anthropic Messages API, or a mock when no API key is set.

The contract is in `base` (which knows none of its implementations); the factory is here,
beside them, as `alice.services.eventlog` does for the event logs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from alice.services.ai.base import AIProvider, ChatTurn, StreamEvent, TextDelta, Usage
from alice.services.ai.context import build_context

if TYPE_CHECKING:
    from alice.core.config import Settings

__all__ = [
    "AIProvider",
    "ChatTurn",
    "StreamEvent",
    "TextDelta",
    "Usage",
    "build_context",
    "create_provider",
]


def create_provider(
    settings: Settings, *, on_error: Callable[[str], None] | None = None
) -> AIProvider:
    """The Anthropic provider when an API key is configured, else the mock. `on_error` is
    called with the cause of each failed provider request (the metrics count it)."""
    if settings.anthropic_api_key is not None and settings.anthropic_api_key.get_secret_value():
        from alice.services.ai.anthropic import AnthropicProvider

        return AnthropicProvider(settings, on_error=on_error)
    from alice.services.ai.mock import MockProvider

    return MockProvider(settings)
