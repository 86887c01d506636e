"""What the provider is sent: the conversation so far, trimmed and shaped into turns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

from alice.services.ai.base import ChatTurn

TURN_SEPARATOR = "\n\n"
_ROLES = ("user", "assistant")


def build_context(history: Sequence[tuple[str, str, str]], max_messages: int) -> list[ChatTurn]:
    """The turns for the provider, from `history` as (role, content, status), oldest first.

    `history` ends with the new user message. In order:

    1. Left out: messages whose status is `streaming` (a reply still being written, such as the
       one this context is for), messages whose content is empty or only whitespace, and roles
       other than `user` and `assistant`.
    2. Of what is left, the last message (the new one) is kept with at most `max_messages`
       messages before it; older ones are dropped first. The limit counts messages, before
       any joining, so at most `max_messages + 1` messages reach the provider.
    3. Leading `assistant` messages are dropped, so the context starts with a user turn.
    4. Consecutive messages of one role become one turn, their contents joined by a blank line.

    Contents are passed as stored (not stripped). An empty history gives an empty list.
    """
    kept = [
        (role, content)
        for role, content, status in history
        if status != "streaming" and role in _ROLES and content.strip()
    ]
    if not kept:
        return []
    kept = kept[-(max(max_messages, 0) + 1) :]
    while kept and kept[0][0] != "user":
        kept.pop(0)

    turns: list[ChatTurn] = []
    for role, content in kept:
        if turns and turns[-1].role == role:
            turns[-1] = ChatTurn(turns[-1].role, turns[-1].content + TURN_SEPARATOR + content)
        else:
            turns.append(ChatTurn(cast(Literal["user", "assistant"], role), content))
    return turns
