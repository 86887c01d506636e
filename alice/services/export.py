"""ExportService: one conversation as a Markdown or JSON download, streamed.

Markdown is what a person reads: the active branch, as `GET …/messages` pages it. JSON is
what a program reads back: the conversation and every message of every branch (each
message as its MessageResponse, which carries `parent_id` where branches exist), with
`exported_at` last, so that a download cut short is not valid JSON. Both are read in keyset
pages, each a short read: no connection is held while the client downloads."""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from sqlalchemy import bindparam, select, tuple_

from alice.core.database import Direct
from alice.models import Message
from alice.models.message import SIBLING_COUNT
from alice.schemas.chat import ConversationResponse
from alice.services.chat import ChatService, message_response

ExportFormat = Literal["markdown", "json"]
_PAGE = 100
FILENAME_MAX = 100
_FALLBACK = "conversation"
# Characters no file name should carry on any system, and quotes/backslash that would end
# or escape the quoted header value.
_UNSAFE = re.compile(r'[\\/:*?"<>|]+')
_NOT_ASCII_SAFE = re.compile(r"[^A-Za-z0-9 ._()\-]+")
_SPACES = re.compile(r"\s+")

_ALL_MESSAGES = select(*Message.__table__.columns, SIBLING_COUNT.label("sibling_count")).where(
    Message.conversation_id == bindparam("conversation_id")
)
_ORDER = (Message.created_at, Message.id)
_ALL_FIRST = _ALL_MESSAGES.order_by(*_ORDER).limit(bindparam("limit"))
_ALL_AFTER = (
    _ALL_MESSAGES.where(
        tuple_(Message.created_at, Message.id)
        > tuple_(
            bindparam("at", type_=Message.created_at.type),
            bindparam("after_id", type_=Message.id.type),
        )
    )
    .order_by(*_ORDER)
    .limit(bindparam("limit"))
)


@dataclass(frozen=True, slots=True)
class Export:
    media_type: str
    content_disposition: str
    body: AsyncIterator[bytes]


def safe_filename(title: str) -> str:
    """A file name made from a title that no file system or header can be hurt by: no
    control or format characters, no path separators or quotes, no leading dot, at most
    FILENAME_MAX characters; never empty."""
    name = unicodedata.normalize("NFC", title)
    name = "".join(ch if ch.isprintable() else " " for ch in name)
    name = _UNSAFE.sub(" ", name)
    name = _SPACES.sub(" ", name).strip(" .")[:FILENAME_MAX].strip(" .")
    return name or _FALLBACK


def content_disposition(title: str, extension: str) -> str:
    """`attachment` with an ASCII `filename` and the UTF-8 `filename*` (RFC 6266, 5987)."""
    name = safe_filename(title)
    # The ASCII fallback: accents dropped (é -> e), anything else not plainly safe -> "_".
    decomposed = unicodedata.normalize("NFKD", name)
    ascii_name = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    ascii_name = _SPACES.sub(" ", _NOT_ASCII_SAFE.sub("_", ascii_name)).strip(" ._") or _FALLBACK
    return (
        f'attachment; filename="{ascii_name}.{extension}"; '
        f"filename*=UTF-8''{quote(name, safe='')}.{extension}"
    )


class ExportService:
    def __init__(self, chat: ChatService, direct: Direct) -> None:
        self._chat = chat
        self._direct = direct

    async def export(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, fmt: ExportFormat
    ) -> Export:
        """The download of one of the user's conversations (404 for anyone else's)."""
        conv = await self._chat.get_conversation(user_id, conversation_id)
        if fmt == "markdown":
            return Export(
                "text/markdown; charset=utf-8",
                content_disposition(conv.title, "md"),
                self._markdown(user_id, conversation_id, conv.title),
            )
        header = ConversationResponse.model_validate(conv).model_dump(mode="json")
        return Export(
            "application/json",
            content_disposition(conv.title, "json"),
            self._json(conversation_id, header),
        )

    async def _markdown(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, title: str
    ) -> AsyncIterator[bytes]:
        yield f"# {title}\n".encode()
        cursor: str | None = None
        while True:
            rows, cursor = await self._chat.list_messages(user_id, conversation_id, _PAGE, cursor)
            yield "".join(f"\n## {m.role}\n\n{m.content}\n" for m in rows).encode()
            if cursor is None:
                return

    async def _json(
        self, conversation_id: uuid.UUID, conversation: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        yield b'{"conversation": ' + _dumps(conversation) + b', "messages": ['
        params: dict[str, Any] = {"conversation_id": conversation_id, "limit": _PAGE}
        query = _ALL_FIRST
        first = True
        while True:
            rows = list(await self._direct.all(query, params))
            parts = []
            for row in rows:
                parts.append(b"" if first else b", ")
                parts.append(_dumps(message_response(row).model_dump(mode="json")))  # type: ignore[arg-type]
                first = False
            yield b"".join(parts)
            if len(rows) < _PAGE:
                break
            params["at"], params["after_id"] = rows[-1].created_at, rows[-1].id
            query = _ALL_AFTER
        exported_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        yield b'], "exported_at": ' + _dumps(exported_at) + b"}"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()
