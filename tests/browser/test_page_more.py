"""SPEC 16, the rest of what a person does on the page: search, export, long lists loaded in
keyset pages as they scroll, a reply that goes on through a lost network, edit, regenerate and
versions, and refusals shown in words."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser.conftest import CuttableLink, Shots, Site, axe_violations
from tests.browser.pagekit import Person, new_email
from tests.browser.test_page import LONG, stored_messages
from tests.conftest import PASSWORD


@pytest.fixture
def site_settings() -> dict[str, Any]:
    return {"mock_token_delay_ms": 60}


async def test_search_finds_a_message_and_opens_its_conversation(
    site: Site, new_context: Any, shots: Shots
) -> None:
    context = await new_context()
    person = Person(await context.new_page())
    page = person.page
    await person.open()
    await person.register(new_email())
    await person.send("Tell me about the zebrafish please")
    await person.wait_reply_done()
    first = page.url
    await page.get_by_role("button", name="New conversation").click()
    await person.send("Something else entirely")
    await person.wait_reply_done()

    await page.get_by_label("Search").fill("zebrafish")
    hits = page.get_by_role("list", name="Matches").get_by_role("link")
    await hits.filter(has_text="zebrafish").first.wait_for()
    assert await page.locator("#search-results mark", has_text="zebrafish").count() >= 1
    await shots.take(page, "search")
    assert await axe_violations(page) == []
    await hits.filter(has_text="zebrafish").first.click()
    await page.wait_for_url(first)
    await person.articles().first.filter(has_text="zebrafish").wait_for()
    await page.get_by_role("button", name="Clear search").click()
    assert await page.locator("#search-results").is_hidden()
    assert person.problems == []


async def test_export_downloads_the_conversation(
    site: Site, new_context: Any, shots: Shots
) -> None:
    context = await new_context(accept_downloads=True)
    person = Person(await context.new_page())
    page = person.page
    await person.open()
    await person.register(new_email())
    await person.send("Export me")
    await person.wait_reply_done()
    async with page.expect_download() as info:
        await page.get_by_role("button", name="Export Markdown").click()
    download = await info.value
    assert download.suggested_filename == "Export me.md"
    text = open(await download.path(), encoding="utf-8").read()
    assert text.startswith("# Export me")
    assert "Export me" in text and "Hello! I am ALICE" in text
    async with page.expect_download() as info:
        await page.get_by_role("button", name="Export JSON").click()
    assert (await info.value).suggested_filename == "Export me.json"
    assert person.problems == []


async def _seed(site: Site, email: str, conversations: int, messages: int) -> str:
    """A user with `conversations` conversations, the newest of them `messages` long."""
    from alice.models import Conversation, Message

    await site.services.auth.register(email, PASSWORD, None)
    from sqlalchemy import select

    from alice.models import User

    start = datetime.now(UTC) - timedelta(days=1)
    async with site.services.sessions() as session:
        user = await session.scalar(select(User).where(User.email == email))
        newest = None
        for i in range(conversations):
            c = Conversation(
                user_id=user.id,
                title=f"Topic {i:02d}",
                created_at=start + timedelta(minutes=i),
                updated_at=start + timedelta(minutes=i),
            )
            session.add(c)
            newest = c
        await session.flush()
        parent = None
        for i in range(messages):
            m = Message(
                conversation_id=newest.id,
                role="user" if i % 2 == 0 else "assistant",
                content=f"Line {i:03d}",
                created_at=start + timedelta(seconds=i),
            )
            if hasattr(Message, "parent_id"):  # SPEC 14: one straight active branch
                m.parent_id = parent
                m.depth = m.active_depth = i
                m.sibling_index = 0
            session.add(m)
            await session.flush()
            parent = m.id
        await session.commit()
        return str(newest.id)


async def test_long_lists_load_as_they_scroll(site: Site, new_context: Any, shots: Shots) -> None:
    email = new_email()
    newest = await _seed(site, email, conversations=45, messages=120)
    context = await new_context(viewport={"width": 1280, "height": 700})
    person = Person(await context.new_page())
    page = person.page
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/api/v1/chat/" in r.url else None)
    await page.goto(f"/#c={newest}")
    await person.log_in(email)
    nav = page.get_by_role("navigation", name="Conversations")
    await nav.get_by_role("link", name="Topic 44").wait_for()
    await person.articles().nth(49).wait_for()
    # One page of each, until the person scrolls.
    assert await nav.get_by_role("link").count() == 20
    assert await person.articles().count() == 50
    for expected in (100, 120):
        await person.conversation().evaluate("el => el.scrollTop = el.scrollHeight")
        await person.articles().nth(expected - 1).wait_for()
    await page.wait_for_timeout(300)
    assert await person.articles().count() == 120
    texts = await person.page.locator("#message-list .body").all_inner_texts()
    assert texts == [f"Line {i:03d}" for i in range(120)]
    for expected in (40, 45):
        await nav.evaluate("el => el.scrollTop = el.scrollHeight")
        await nav.get_by_role("link").nth(expected - 1).wait_for()
    names = await nav.get_by_role("link").all_inner_texts()
    assert names == [f"Topic {i:02d}" for i in range(44, -1, -1)]
    pages = [u for u in requests if "/messages?" in u]
    assert len(pages) == 3 and all("offset" not in u for u in pages), pages
    await shots.take(page, "long-lists")
    assert person.problems == []


async def test_a_reply_goes_on_through_a_lost_network(
    site: Site, new_context: Any, shots: Shots
) -> None:
    link = await CuttableLink(site.url).start()
    try:
        context = await new_context(origin=link.url)
        person = Person(await context.new_page())
        page = person.page
        reattached: list[str] = []
        page.on("request", lambda r: reattached.append(r.url) if "/stream" in r.url else None)
        await person.open()
        await person.register(new_email())
        await person.send(f"Keep going. {LONG}")
        await person.wait_reply_started(5)
        link.cut()  # every connection gone, new ones refused
        await page.wait_for_timeout(700)
        await shots.take(page, "network-lost")
        link.restore()
        await person.wait_reply_done()
    finally:
        await link.close()
    conversation = page.url.split("#c=", 1)[1]
    stored = await stored_messages(site, conversation)
    assert stored[-1]["status"] == "complete"
    assert await person.last_reply_text() == " ".join(stored[-1]["content"].split())
    assert reattached, "the page never re-attached"
    assert person.problems == []


def _has_route(site: Site, suffix: str) -> bool:
    return any(getattr(r, "path", "").endswith(suffix) for r in site.app.routes)


async def test_edit_regenerate_and_step_between_versions(
    site: Site, new_context: Any, shots: Shots
) -> None:
    if not _has_route(site, "/branch"):
        pytest.skip("branches (SPEC 14) are not on this server yet")
    context = await new_context()
    person = Person(await context.new_page())
    page = person.page
    await person.open()
    await person.register(new_email())
    await person.send("First question")
    await person.wait_reply_done()

    # Regenerate: a second version of the reply, "2 / 2".
    await page.get_by_role("button", name="Regenerate").click()
    await person.wait_reply_done(at_least=1)
    reply = person.replies().last
    await reply.get_by_text("2 / 2").wait_for()
    await shots.take(page, "regenerated")
    await reply.get_by_role("button", name="Previous version").click()
    await person.replies().last.get_by_text("1 / 2").wait_for()

    # Edit the question: the new one and its reply replace the old on the active branch.
    await page.get_by_role("button", name="Edit").click()
    await page.get_by_label("Edited message").fill("Second question")
    await page.get_by_role("button", name="Save and send").click()
    await person.wait_reply_done(at_least=1)
    assert "Second question" in await person.last_reply_text()
    question = person.articles().first
    await question.get_by_text("2 / 2").wait_for()
    assert await person.articles().count() == 2
    await shots.take(page, "edited")
    assert await axe_violations(page) == []
    await question.get_by_role("button", name="Previous version").click()
    await person.articles().first.get_by_text("1 / 2").wait_for()
    assert await person.articles().first.locator(".body").inner_text() == "First question"
    assert "First question" in await person.last_reply_text()
    assert person.problems == []


REFUSALS = [
    (429, "RATE_LIMIT_EXCEEDED", {"Retry-After": "17"}, "Try again in 17 seconds."),
    (429, "QUOTA_EXCEEDED", {"Retry-After": "7200"}, "renews in 2 h 0 min"),
    (409, "GENERATION_IN_PROGRESS", {}, "A reply is still being written"),
    (503, "AI_SERVICE_UNAVAILABLE", {}, "The AI service is not available right now"),
]


def _fulfil(status: int, body: str, headers: dict[str, str]) -> Any:
    async def handler(route: Any) -> None:
        await route.fulfill(status=status, body=body, headers=headers)

    return handler


async def test_refusals_are_shown_in_words(site: Site, new_context: Any, shots: Shots) -> None:
    context = await new_context()
    person = Person(await context.new_page())
    page = person.page
    await person.open()
    await person.register(new_email())
    for status, code, headers, words in REFUSALS:
        body = json.dumps({"detail": "refused", "code": code})
        await page.route(
            "**/api/v1/chat/message",
            _fulfil(status, body, {"Content-Type": "application/json", **headers}),
        )
        await person.send(f"This one is refused with {status}")
        await page.get_by_role("status").filter(has_text=words).wait_for()
        # Nothing was sent: the text is back in the message box for another try.
        message = await page.get_by_label("Message").input_value()
        assert message == f"This one is refused with {status}"
        assert await person.articles().count() == 0
        await shots.take(page, f"refused-{code.lower()}")
        await page.unroute("**/api/v1/chat/message")
    assert [p for p in person.problems if "status of" not in p] == []


class TestModels:
    @pytest.fixture
    def site_settings(self) -> dict[str, Any]:
        return {"mock_token_delay_ms": 0, "ai_models": "model-a,model-b"}

    async def test_a_new_conversation_takes_the_chosen_model(
        self, site: Site, new_context: Any, shots: Shots
    ) -> None:
        if not _has_route(site, "/chat/models"):
            pytest.skip("models (SPEC 15) are not on this server yet")
        context = await new_context()
        person = Person(await context.new_page())
        page = person.page
        await person.open()
        await person.register(new_email())
        model = page.get_by_label("Model")
        await expect(model).to_have_value("model-a")  # the default comes first
        await model.select_option("model-b")
        await person.send("Which model?")
        await person.wait_reply_done()
        conversation = page.url.split("#c=", 1)[1]
        from sqlalchemy import select

        from alice.models import Conversation

        async with site.services.sessions() as session:
            kept = await session.scalar(
                select(Conversation.model).where(Conversation.id == uuid.UUID(conversation))
            )
        assert kept == "model-b"
        # The conversation keeps its model: the choice shows it and cannot change it.
        await expect(model).to_be_disabled()
        await expect(model).to_have_value("model-b")
        await page.get_by_role("button", name="New conversation").click()
        await expect(model).to_be_enabled()
        await shots.take(page, "models")
        assert person.problems == []


async def test_a_send_whose_answer_is_lost_is_asked_again_not_sent_twice(
    site: Site, new_context: Any, shots: Shots
) -> None:
    if "Idempotency-Key" not in str(site.app.openapi()["paths"].get("/api/v1/chat/message")):
        pytest.skip("idempotent sends (SPEC 6) are not on this server yet")
    context = await new_context()
    person = Person(await context.new_page())
    page = person.page
    await person.open()
    await person.register(new_email())
    dropped: list[str] = []

    async def drop_the_first_answer(route: Any) -> None:
        if dropped:
            await route.continue_()
            return
        # The server gets the message and streams its reply; the browser never sees it.
        await route.fetch()
        dropped.append(route.request.headers["idempotency-key"])
        await route.abort("connectionreset")

    await page.route("**/api/v1/chat/message", drop_the_first_answer)
    await person.send("Only once, please")
    await person.wait_reply_done()
    conversation = page.url.split("#c=", 1)[1]
    stored = await stored_messages(site, conversation)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert await person.last_reply_text() == " ".join(stored[-1]["content"].split())
    assert await person.articles().count() == 2
    assert dropped
    await shots.take(page, "asked-again")
