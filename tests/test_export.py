"""SPEC section 15: a conversation exported as Markdown or JSON, with a safe file name."""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import unquote

import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import update

from alice.main import create_app
from alice.models import Conversation
from alice.services.export import FILENAME_MAX, content_disposition, safe_filename
from tests.chatkit import CHAT, send
from tests.conftest import PASSWORD, UserSession, client_for

# What a client may safely take apart: an ASCII filename="…" and an RFC 5987 filename*.
_HEADER = re.compile(
    r"attachment; filename=\"(?P<ascii>[ -!#-\[\]-~]+)\"; "
    r"filename\*=UTF-8''(?P<utf8>[A-Za-z0-9%._~-]+)"
)

HOSTILE_TITLES = [
    "../../etc/passwd",
    '"quoted"; filename="evil.exe"',
    "line one\r\nSet-Cookie: x=1",
    "x" * 300,
    "🎉 Party 🎉",
    "back\\slash/and:colon*?<>|",
    "...",
    ".hidden",
    "\u202eexe.txt",  # right-to-left override
    "Straße café",
    " \t ",
]


def assert_safe(header: str, extension: str) -> str:
    m = _HEADER.fullmatch(header)
    assert m, header
    for name in (m["ascii"], unquote(m["utf8"])):
        assert name.endswith(f".{extension}")
        stem = name[: -len(extension) - 1]
        assert stem and not stem.startswith(".") and ".." not in stem.split("/")
        assert not set(stem) & set('/\\"\r\n\x00:*?<>|')
        assert all(ch.isprintable() for ch in stem)
        assert len(stem) <= FILENAME_MAX
    return unquote(m["utf8"])


@pytest.mark.parametrize("title", HOSTILE_TITLES)
def test_hostile_titles_make_safe_file_names(title):
    name = assert_safe(content_disposition(title, "md"), "md")
    header = content_disposition(title, "json")
    header.encode("latin-1")  # what Starlette encodes a header with: no 500
    assert_safe(header, "json")
    if title == "🎉 Party 🎉":
        assert name == "🎉 Party 🎉.md" and 'filename="Party.md"' in header.replace(".json", ".md")
    if title == "Straße café":
        assert 'filename="Strasse cafe.json"' in header or 'filename="Stra_e cafe.json"' in header


def test_safe_filename_keeps_ordinary_titles():
    assert safe_filename("My tax return 2025") == "My tax return 2025"
    assert safe_filename("") == "conversation"


async def _conversation(client, user, title: str | None = None):
    first = await send(client, user.access_token, "Hello there")
    await send(client, user.access_token, "Second question", first.conversation_id)
    if title is not None:
        resp = await client.patch(
            f"{CHAT}/conversations/{first.conversation_id}",
            json={"title": title},
            headers=user.headers,
        )
        assert resp.status_code == 200, resp.text
    return first.conversation_id


async def test_markdown_export(client, user):
    conv = await _conversation(client, user, "Trip # planning")
    resp = await client.get(
        f"{CHAT}/conversations/{conv}/export", params={"format": "markdown"}, headers=user.headers
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/markdown")
    assert assert_safe(resp.headers["content-disposition"], "md") == "Trip # planning.md"
    text = resp.text
    assert text.startswith("# Trip # planning\n")
    headings = re.findall(r"^## (\w+)$", text, flags=re.M)
    assert headings == ["user", "assistant", "user", "assistant"]
    assert "\n## user\n\nHello there\n" in text and "You said: Second question" in text


async def test_json_export_has_every_message_and_exported_at_last(client, user):
    conv = await _conversation(client, user)
    resp = await client.get(
        f"{CHAT}/conversations/{conv}/export", params={"format": "json"}, headers=user.headers
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert_safe(resp.headers["content-disposition"], "json")
    body = resp.json()
    assert list(body) == ["conversation", "messages", "exported_at"]
    assert body["conversation"]["id"] == str(conv)
    listed = (
        await client.get(
            f"{CHAT}/conversations/{conv}/messages", params={"limit": 100}, headers=user.headers
        )
    ).json()["items"]
    assert body["messages"] == listed


async def test_export_of_many_messages_pages_through_all(settings):
    application = create_app(settings.model_copy(update={"rate_limit_enabled": False}))
    async with LifespanManager(application), client_for(application) as client:
        pair = await application.state.services.auth.register(
            f"x-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, None
        )
        user = UserSession("", PASSWORD, pair.access_token, pair.refresh_token)
        await _export_many(client, user)


async def _export_many(client, user):
    first = await send(client, user.access_token, "m0")
    for i in range(1, 60):
        stream = await send(client, user.access_token, f"m{i}", first.conversation_id)
        assert stream.status == 200
    url = f"{CHAT}/conversations/{first.conversation_id}/export"
    body = (await client.get(url, params={"format": "json"}, headers=user.headers)).json()
    assert len(body["messages"]) == 120
    assert len({m["id"] for m in body["messages"]}) == 120
    md = (await client.get(url, headers=user.headers)).text
    assert md.count("\n## user\n") == 60 and md.count("\n## assistant\n") == 60


async def test_export_with_a_hostile_stored_title(client, user, app):
    conv = await _conversation(client, user)
    async with app.state.services.sessions() as s, s.begin():
        await s.execute(
            update(Conversation)
            .where(Conversation.id == conv)
            .values(title='../"evil"\r\n' + "é" * 150)
        )
    for fmt, ext in (("markdown", "md"), ("json", "json")):
        resp = await client.get(
            f"{CHAT}/conversations/{conv}/export", params={"format": fmt}, headers=user.headers
        )
        assert resp.status_code == 200
        assert_safe(resp.headers["content-disposition"], ext)


async def test_someone_elses_or_missing_conversation_is_404(client, make_user):
    owner, other = await make_user(), await make_user()
    conv = await _conversation(client, owner)
    for cid in (conv, uuid.uuid4()):
        resp = await client.get(f"{CHAT}/conversations/{cid}/export", headers=other.headers)
        assert resp.status_code == 404 and resp.json()["code"] == "CONVERSATION_NOT_FOUND"


async def test_unknown_format_is_422(client, user):
    conv = await _conversation(client, user)
    resp = await client.get(
        f"{CHAT}/conversations/{conv}/export", params={"format": "pdf"}, headers=user.headers
    )
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "query.format"


def test_json_export_is_valid_json_only_when_whole():
    # `exported_at` is last: a download cut anywhere before the end does not parse.
    whole = '{"conversation": {}, "messages": [], "exported_at": "x"}'
    json.loads(whole)
    with pytest.raises(json.JSONDecodeError):
        json.loads(whole[:-1])
