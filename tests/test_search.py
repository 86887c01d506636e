"""SPEC section 15: full-text search over the caller's messages and titles."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import text

from alice.main import create_app
from alice.services.search import SNIPPET_MAX, fold, snippet
from tests.chatkit import CHAT, send
from tests.conftest import client_for

SEARCH = f"{CHAT}/search"


async def search(client, user, q: str, **params: Any) -> dict:
    resp = await client.get(SEARCH, params={"q": q, **params}, headers=user.headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def say(client, user, content: str, conversation_id=None):
    stream = await send(client, user.access_token, content, conversation_id)
    assert stream.terminal.event == "done", stream.events
    return stream


async def test_words_in_any_order_case_and_accent_insensitive(client, user):
    tag = uuid.uuid4().hex[:8]
    first = await say(client, user, f"Meine Steuererklärung {tag} für 2025 ist fertig")
    await say(client, user, f"Crème BRÛLÉE im Café {tag}")
    for q in ("steuererklarung", "STEUERERKLÄRUNG", "fertig 2025 Steuererklärung"):
        body = await search(client, user, f"{q} {tag}")
        ids = {h["message_id"] for h in body["items"]}
        # The user's message, the mock's echo of it and the title made from it.
        assert None in ids and len(body["items"]) == 3, body
        assert {h["conversation_id"] for h in body["items"]} == {str(first.conversation_id)}
    hits = (await search(client, user, f"cafe creme brulee {tag}"))["items"]
    assert len(hits) == 3 and all("Café" in h["snippet"] for h in hits)
    # Every word must be in one message or title: these two are in different ones.
    assert (await search(client, user, f"cafe fertig {tag}"))["items"] == []
    assert (await search(client, user, f"cafe {tag} nowhere"))["items"] == []


async def test_reply_is_found_once_saved_with_its_ids(client, user):
    tag = uuid.uuid4().hex[:8]
    stream = await say(client, user, f"Please remember {tag}")
    hits = (await search(client, user, "mock mode " + tag))["items"]
    assert [h["message_id"] for h in hits] == [str(stream.message_id)]
    assert hits[0]["title"] == f"Please remember {tag}"


async def test_newest_first_keyset_walk_no_duplicate_no_gap(client, user):
    tag = uuid.uuid4().hex[:8]
    conv = (await say(client, user, f"walk {tag} 0")).conversation_id
    for i in range(1, 6):
        await say(client, user, f"walk {tag} {i}", conv)
    expected = (await search(client, user, tag, limit=100))["items"]
    assert len(expected) == 13  # 6 questions, 6 echoes, 1 title
    stamps = [h["created_at"] for h in expected]
    assert stamps == sorted(stamps, reverse=True)
    # The title's time is the conversation's updated_at: the last question's.
    assert expected[0]["message_id"] is not None
    walked: list[dict] = []
    cursor = None
    while True:
        body = await search(client, user, tag, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(body["items"]) <= 2
        walked.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert walked == expected


async def test_another_users_text_is_never_found(client, make_user):
    alice, bob = await make_user(), await make_user()
    tag = uuid.uuid4().hex[:8]
    await say(client, alice, f"secret {tag}")
    assert (await search(client, bob, tag))["items"] == []
    # Nor by naming the owner's token or a column, as FTS5 syntax would.
    me = (await client.get("/api/v1/auth/me", headers=alice.headers)).json()["id"]
    for q in (f"owner:u{uuid.UUID(me).hex} {tag}", f"body:{tag}", f"{tag} OR secret"):
        assert (await search(client, bob, q))["items"] == []


async def test_renamed_and_deleted_conversations_at_once(client, user, backend, app):
    tag = uuid.uuid4().hex[:8]
    conv = (await say(client, user, f"old title {tag}")).conversation_id
    resp = await client.patch(
        f"{CHAT}/conversations/{conv}",
        json={"title": f"Brand new name {tag}"},
        headers=user.headers,
    )
    assert resp.status_code == 200
    titles = [h for h in (await search(client, user, tag))["items"] if h["message_id"] is None]
    assert [h["snippet"] for h in titles] == [f"Brand new name {tag}"]
    assert (await search(client, user, f"brand {tag}"))["items"][0]["title"].startswith("Brand")
    assert [
        h for h in (await search(client, user, f"old {tag}"))["items"] if not h["message_id"]
    ] == []

    resp = await client.delete(f"{CHAT}/conversations/{conv}", headers=user.headers)
    assert resp.status_code == 204
    assert (await search(client, user, tag))["items"] == []
    await assert_index_consistent(app, backend)


async def assert_index_consistent(app, backend: str) -> None:
    """Every indexed doc belongs to a live message or title, and (SQLite) the FTS table holds
    exactly the docs' rows: a contentless delete with the wrong values would leave one."""
    async with app.state.services.engine.connect() as conn:
        orphans = await conn.scalar(
            text(
                "SELECT count(*) FROM search_docs d LEFT JOIN messages m ON m.id = d.message_id "
                "LEFT JOIN conversations c ON c.id = d.conversation_id "
                "WHERE c.id IS NULL OR (d.message_id IS NOT NULL AND m.id IS NULL)"
            )
        )
        assert orphans == 0
        docs = await conn.scalar(text("SELECT count(*) FROM search_docs"))
        if backend == "sqlite":
            fts = await conn.scalar(
                text("SELECT count(*) FROM search_fts WHERE search_fts MATCH 'owner:u*'")
            )
            assert fts == docs


async def test_operators_are_words_never_syntax(client, user):
    tag = uuid.uuid4().hex[:8]
    await say(client, user, f"tax return {tag}")
    await say(client, user, f"tax or return {tag} near")
    # OR is a word to find, not a disjunction; "-" is no NOT; quotes and stars are text.
    hits = (await search(client, user, f"tax OR return {tag}"))["items"]
    assert hits and all(" or " in h["snippet"].lower() for h in hits)
    assert len((await search(client, user, f"-tax return {tag}"))["items"]) == 6
    assert len((await search(client, user, f'"tax" return* {tag}^'))["items"]) == 6
    assert len((await search(client, user, f"NEAR(tax return) {tag}"))["items"]) == 3
    for q in ('"', "'", "-", "*", "^", "OR", "AND NOT", "NEAR", "(", ")", ":", "{a}", "!!!"):
        await search(client, user, q)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"q": ""}, "query.q"),
        ({"q": "x" * 201}, "query.q"),
        ({"q": "a\x00b"}, "query.q"),
        ({"q": "a", "limit": 0}, "query.limit"),
        ({"q": "a", "limit": 101}, "query.limit"),
        ({"q": "a", "cursor": "garbage"}, "query.cursor"),
        ({}, "query.q"),
    ],
)
async def test_bad_parameters_are_422(client, user, params, field):
    resp = await client.get(SEARCH, params=params, headers=user.headers)
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == "VALIDATION_ERROR"
    assert resp.json()["errors"][0]["field"] == field


async def test_search_needs_a_token(client):
    resp = await client.get(SEARCH, params={"q": "x"})
    assert resp.status_code == 401 and resp.json()["code"] == "UNAUTHORIZED"


async def test_snippet_is_plain_text_around_the_match_with_offsets(client, user):
    tag = uuid.uuid4().hex[:8]
    content = "lorem ipsum " * 60 + f"<b>Ünïcödé</b> {tag}\n\nnext line " + "dolor " * 60
    await say(client, user, content)
    hits = (await search(client, user, f"unicode {tag}"))["items"]
    user_hit = next(h for h in hits if h["message_id"] and "lorem" in h["snippet"])
    s = user_hit["snippet"]
    assert len(s) <= SNIPPET_MAX and "<b>Ünïcödé</b>" in s and "\n" not in s
    marked = sorted(s[a:b] for a, b in user_hit["highlights"])
    assert marked == sorted(["Ünïcödé", tag])


def test_snippet_edges():
    assert snippet("short text", {"text"}) == ("short text", [(6, 10)])
    long = "word " * 100 + "target"
    s, marks = snippet(long, {"target"})
    assert len(s) <= SNIPPET_MAX and s.startswith("…") and s.endswith("target")
    assert [s[a:b] for a, b in marks] == ["target"]
    s, marks = snippet("target " + "x" * 400, {"target"})
    assert len(s) <= SNIPPET_MAX and s.endswith("…") and marks == [(0, 6)]
    s, marks = snippet("nothing here " * 30, {"absent"})
    assert len(s) <= SNIPPET_MAX and marks == []
    assert fold("Straße") == "strasse" and fold("CAFÉ") == "cafe"


# --- hostile queries: any text is 200 or 422, never a 500 ----------------------------------


@pytest.fixture
async def open_app(settings):
    application = create_app(settings.model_copy(update={"rate_limit_enabled": False}))
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=60):
        async with client_for(application) as c:
            pair = await application.state.services.auth.register(
                f"h-{uuid.uuid4().hex[:8]}@example.com", "SecurePass123", None
            )
            headers = {"Authorization": f"Bearer {pair.access_token}"}
            await send(c, pair.access_token, 'Some "quoted" text -with OR NEAR(x y) * ^ café')
            yield c, headers


_OPERATORS = st.sampled_from(
    [
        '"',
        "'",
        "-",
        "OR",
        "AND",
        "NOT",
        "NEAR",
        "NEAR(",
        "*",
        "^",
        ":",
        "(",
        ")",
        "\x00",
        "+",
        "{",
        "}",
        "\\",
        "owner:",
        "body:",
        "%",
        "_",
        "&",
        "|",
        "!",
        "<->",
        "::",
    ]
)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=200)


@hsettings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(q=st.one_of(_TEXT, st.lists(st.one_of(_OPERATORS, _TEXT), max_size=12).map(" ".join)))
async def test_hostile_queries_are_200_or_422(open_app, q):
    client, headers = open_app
    resp = await client.get(SEARCH, params={"q": q}, headers=headers)
    assert resp.status_code in (200, 422), (q, resp.status_code, resp.text)
    if resp.status_code == 200:
        for hit in resp.json()["items"]:
            assert len(hit["snippet"]) <= SNIPPET_MAX


async def test_sort_key_has_room_for_far_dates(app, client, user):
    """The key is µs × 1024 in a signed 64-bit integer: messages dated up to the year 2255
    index and sort (× 4096 overflowed in 2041)."""
    from datetime import UTC, datetime

    from alice.models import Conversation, Message

    me = uuid.UUID((await client.get("/api/v1/auth/me", headers=user.headers)).json()["id"])
    tag = uuid.uuid4().hex[:8]
    at = datetime(2250, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    conv_id, msg_id = uuid.uuid4(), uuid.uuid4()
    async with app.state.services.sessions() as s, s.begin():
        s.add(
            Conversation(
                id=conv_id, user_id=me, title=f"future {tag}", created_at=at, updated_at=at
            )
        )
        await s.flush()
        s.add(
            Message(
                id=msg_id, conversation_id=conv_id, role="user", content=f"far {tag}", created_at=at
            )
        )
    await say(client, user, f"now {tag}")
    hits = (await search(client, user, tag))["items"]
    assert hits[0]["created_at"].startswith("2250-06-01T12:00:00.123456")
    assert {h["message_id"] for h in hits[:2]} == {None, str(msg_id)}


@hsettings(max_examples=300, deadline=None)
@given(
    text=st.text(st.sampled_from("ab AB_-.1é\n"), max_size=40),
    words=st.sets(st.text(st.sampled_from("abAB1"), min_size=1, max_size=3), min_size=1),
)
def test_ascii_fast_path_finds_what_folding_each_word_finds(text, words):
    from alice.services import search as s

    folded = {fold(w) for w in words}
    plain = " ".join(text.split())
    slow = [(m.start(), m.end()) for m in s._WORD.finditer(plain) if fold(m.group()) in folded]
    assert s._spans(plain, folded) == slow
