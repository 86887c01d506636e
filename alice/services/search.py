"""SearchService: full-text search over a user's messages and conversation titles.

The index is kept by database triggers (migration 0004), not by this service: messages and
titles are written by many paths (sending, saving a reply, the reaper, rename, delete, the
cascades of an account's deletion, and the paths other features add), and a trigger runs in
the same transaction as each of them, so no path can forget it and a deleted conversation
is gone from search at once. This service only reads.

- SQLite: FTS5 (`unicode61 remove_diacritics 2`: case- and accent-insensitive), the user's
  id indexed as one token beside the text, so the user filter, the match and the keyset
  (`rowid < cursor ORDER BY rowid DESC`) all run inside FTS5: a page costs the same at any
  depth.
- PostgreSQL: a tsvector under a GIN index, in a configuration that folds accents
  (`unaccent`) and case and neither stems nor drops stop words; `plainto_tsquery`, which
  never raises and treats every operator as text.

The user's text is never query syntax: on SQLite each word of `q` becomes a quoted phrase
(words are runs of letters and digits, so a quote cannot occur inside), on PostgreSQL `q`
goes to `plainto_tsquery` as a bound parameter. Snippets and highlight offsets are computed
here, in plain text, from the rows of one page.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Uuid, bindparam, text

from alice.core.database import Direct
from alice.models.base import UTCDateTime
from alice.services.pagination import decode_key_cursor, encode_key_cursor

SNIPPET_MAX = 200
# How much text before the first match a snippet keeps, when the match is far in.
_LEAD = 60
_WORD = re.compile(r"[^\W_]+")
_SPACES = re.compile(r"\s+")
_ELLIPSIS = "…"
_FIRST_KEY = 2**63 - 1

_COLUMNS: dict[str, Any] = {
    "conversation_id": Uuid(),
    "message_id": Uuid(),
    "message_at": UTCDateTime(),
    "title_at": UTCDateTime(),
}
_PAGE_ROWS = """
    SELECT d.id AS key, d.conversation_id, d.message_id, c.title, m.content,
        m.created_at AS message_at, c.updated_at AS title_at
    FROM ({page}) AS f
    JOIN search_docs d ON d.id = f.id
    JOIN conversations c ON c.id = d.conversation_id
    LEFT JOIN messages m ON m.id = d.message_id
    ORDER BY d.id DESC
"""
_SQLITE_SEARCH = text(
    _PAGE_ROWS.format(
        page="SELECT rowid AS id FROM search_fts WHERE search_fts MATCH :match "
        "AND rowid < :before ORDER BY rowid DESC LIMIT :limit"
    )
).columns(**_COLUMNS)
_PG_SEARCH = (
    text(
        _PAGE_ROWS.format(
            page="SELECT id FROM search_docs WHERE user_id = :user_id "
            "AND tsv @@ plainto_tsquery('alice_search', :q) AND id < :before "
            "ORDER BY id DESC LIMIT :limit"
        )
    )
    .bindparams(bindparam("user_id", type_=Uuid()))
    .columns(**_COLUMNS)
)


@dataclass(frozen=True, slots=True)
class Hit:
    conversation_id: uuid.UUID
    message_id: uuid.UUID | None
    title: str
    snippet: str
    highlights: list[tuple[int, int]]
    created_at: datetime


def fold(word: str) -> str:
    """A word as search compares it: accents dropped, case folded (ß = ss)."""
    if word.isascii():
        return word.lower()
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def query_words(q: str) -> list[str]:
    """The words of a query: runs of letters and digits; everything else separates them."""
    return _WORD.findall(q)


def fts5_match(user_id: uuid.UUID, words: list[str]) -> str:
    """The FTS5 expression: the user's token and every word, each a quoted phrase."""
    phrases = " ".join(f'"{w}"' for w in words)
    return f'owner:"u{user_id.hex}" AND body:({phrases})'


def snippet(content: str, folded: set[str]) -> tuple[str, list[tuple[int, int]]]:
    """At most SNIPPET_MAX code points of `content` (white space folded) around its first
    word in `folded`, and the [start, end) offsets of every such word in it."""
    plain = _SPACES.sub(" ", content).strip()
    spans = _spans(plain, folded)
    if len(plain) <= SNIPPET_MAX:
        return plain, spans
    start = 0
    if spans and spans[0][0] > _LEAD:
        start = spans[0][0] - _LEAD
        space = plain.find(" ", start, spans[0][0])
        if space != -1:
            start = space + 1
    prefix = _ELLIPSIS if start else ""
    room = SNIPPET_MAX - len(prefix)
    end = start + room
    suffix = ""
    if end < len(plain):
        end -= len(_ELLIPSIS)
        space = plain.rfind(" ", start, end + 1)
        if space > start + room // 2:
            end = space
        suffix = _ELLIPSIS
    else:
        end = len(plain)
    shift = len(prefix) - start
    inside = [(a + shift, b + shift) for a, b in spans if a >= start and b <= end]
    return prefix + plain[start:end].rstrip() + suffix, inside


def _spans(plain: str, folded: set[str]) -> list[tuple[int, int]]:
    """Where the words of `folded` are in `plain`. ASCII text against ASCII words (the common
    case) in one regex pass; otherwise each word of the text folded (half a page's time)."""
    if plain.isascii():
        words = tuple(sorted(w for w in folded if w.isascii()))
        return [m.span() for m in _ascii_words(words).finditer(plain)] if words else []
    return [(m.start(), m.end()) for m in _WORD.finditer(plain) if fold(m.group()) in folded]


@lru_cache(maxsize=256)
def _ascii_words(words: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE)


class SearchService:
    def __init__(self, direct: Direct, sqlite: bool) -> None:
        self._direct = direct
        self._sqlite = sqlite

    async def search(
        self, user_id: uuid.UUID, q: str, limit: int, cursor: str | None
    ) -> tuple[list[Hit], str | None]:
        """A page of the user's messages and titles holding every word of `q`, newest first
        (keyset: the cursor carries the last hit's sort key)."""
        before = decode_key_cursor("s", cursor) if cursor else _FIRST_KEY
        words = query_words(q)
        if not words:
            return [], None
        params: dict[str, Any] = {"before": before, "limit": limit + 1}
        if self._sqlite:
            params["match"] = fts5_match(user_id, words)
            statement = _SQLITE_SEARCH
        else:
            params.update(user_id=user_id, q=q)
            statement = _PG_SEARCH
        rows: list[Any] = list(await self._direct.all(statement, params))  # type: ignore[arg-type]
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_key_cursor("s", rows[-1].key)
        folded = {fold(w) for w in words}
        hits = []
        for row in rows:
            is_title = row.message_id is None
            text_ = row.title if is_title else row.content
            excerpt, highlights = snippet(text_, folded)
            hits.append(
                Hit(
                    conversation_id=row.conversation_id,
                    message_id=row.message_id,
                    title=row.title,
                    snippet=excerpt,
                    highlights=highlights,
                    created_at=row.title_at if is_title else row.message_at,
                )
            )
        return hits, next_cursor
