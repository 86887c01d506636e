"""SPEC 16: the chat page, driven in Chromium as a person would use it, at 1280 and 375 px,
with axe-core on each screen and a screenshot of each step."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.browser.conftest import Shots, Site, axe_violations
from tests.browser.pagekit import Person, new_email

WIDTHS = {"desktop": (1280, 800), "phone": (375, 740)}
# A reply long enough to reload in the middle of: the mock echoes the first 20 words.
LONG = " ".join(f"word{i}" for i in range(20))


@pytest.fixture
def site_settings() -> dict[str, Any]:
    return {"mock_token_delay_ms": 60}


async def stored_messages(site: Site, conversation_id: str) -> list[dict[str, Any]]:
    """The conversation's messages as the database holds them, oldest first."""
    from sqlalchemy import select

    from alice.models import Message

    async with site.services.sessions() as session:
        rows = await session.scalars(
            select(Message)
            .where(Message.conversation_id == uuid.UUID(conversation_id))
            .order_by(Message.created_at, Message.id)
        )
        return [{"role": m.role, "content": m.content, "status": m.status} for m in rows]


async def check_axe(person: Person, screen: str) -> None:
    violations = await axe_violations(person.page)
    assert violations == [], f"{screen}: {json.dumps(violations, indent=1)}"


def conversation_id_of(page: Any) -> str:
    assert "#c=" in page.url, page.url
    return page.url.split("#c=", 1)[1]


@pytest.mark.parametrize("size", WIDTHS, ids=list(WIDTHS))
async def test_a_session_as_a_person_would(
    site: Site, new_context: Any, shots: Shots, size: str
) -> None:
    width, height = WIDTHS[size]
    context = await new_context(viewport={"width": width, "height": height})
    person = Person(await context.new_page())
    page = person.page
    await person.open()
    await page.get_by_label("Email").wait_for()
    await shots.take(page, "login")
    await check_axe(person, "login")

    await person.register(new_email())
    await shots.take(page, "empty")
    await check_axe(person, "empty conversation")

    # Ask, and watch the reply arrive token by token.
    await person.watch_reply()
    await person.send(f"Tell me something. {LONG}")
    await person.wait_reply_started(5)
    await shots.take(page, "streaming")
    await person.wait_reply_done()
    texts = await person.reply_texts()
    final = await person.last_reply_text()
    assert final.startswith("Hello! I am ALICE") and final.endswith("word16 ...")
    # One visible step per token or so (29 words), not the whole reply at once at the end.
    assert len(texts) >= 15, texts
    assert all(texts[i + 1].startswith(texts[i].rstrip()) for i in range(len(texts) - 1))
    conversation = conversation_id_of(page)
    assert final == " ".join((await stored_messages(site, conversation))[-1]["content"].split())
    await shots.take(page, "answered")
    await check_axe(person, "conversation")

    # Reload in the middle of the next reply: it carries on, no word lost or doubled.
    await person.send(f"Once more. {LONG}")
    await person.wait_reply_started(6)
    await page.reload()
    await person.conversation().wait_for()
    await person.wait_reply_done(at_least=2)
    stored = await stored_messages(site, conversation)
    assert [m["status"] for m in stored] == ["complete"] * 4
    assert await person.last_reply_text() == " ".join(stored[-1]["content"].split())
    await shots.take(page, "after-reload")

    # Stop a reply: what stays is what was shown.
    await person.send(f"And stop this one. {LONG}")
    await person.wait_reply_started(4)
    await page.get_by_role("button", name="Stop").click()
    await person.wait_reply_done()
    stored = await stored_messages(site, conversation)
    assert stored[-1]["status"] == "stopped"
    shown = await person.last_reply_text()
    assert shown == " ".join(stored[-1]["content"].split())
    assert not shown.endswith("...")
    await shots.take(page, "stopped")

    # Regenerate, and step back to the first version (SPEC 14, where the server has it).
    if await page.get_by_role("button", name="Regenerate").count():
        await page.get_by_role("button", name="Regenerate").last.click()
        await person.replies().last.get_by_text("2 / 2").wait_for()
        await shots.take(page, "regenerated")
        await person.replies().last.get_by_role("button", name="Previous version").click()
        await person.replies().last.get_by_text("1 / 2").wait_for()
        assert await person.last_reply_text() == shown

    # Search.
    if size == "phone":
        await page.get_by_role("button", name="Show conversations").click()
    await page.get_by_label("Search").fill("word7")
    matches = page.get_by_role("list", name="Matches").get_by_role("link")
    await matches.first.wait_for()
    await shots.take(page, "search")
    await check_axe(person, "search")
    await page.get_by_role("button", name="Clear search").click()
    if size == "phone":
        await page.get_by_role("button", name="Hide conversations").click()

    # Rename.
    if size == "phone":
        await page.get_by_role("button", name="Show conversations").click()
        await page.get_by_role("navigation", name="Conversations").get_by_role("link").first.click()
    await page.get_by_role("button", name="Rename").click()
    await page.get_by_label("Title").fill("Words, words")
    await page.get_by_role("button", name="Save title").click()
    await page.get_by_role("heading", name="Words, words").wait_for()
    if size == "phone":
        await page.get_by_role("button", name="Show conversations").click()
    nav = page.get_by_role("navigation", name="Conversations")
    await nav.get_by_role("link", name="Words, words").wait_for()
    await shots.take(page, "renamed")
    await check_axe(person, "conversation list")
    if size == "phone":
        await page.get_by_role("button", name="Hide conversations").click()

    # Delete, after a confirmation.
    await page.get_by_role("button", name="Delete").click()
    await shots.take(page, "confirm-delete")
    await check_axe(person, "confirm delete")
    await page.get_by_role("button", name="Yes, delete").click()
    await page.get_by_role("heading", name="New conversation").wait_for()
    assert await stored_messages(site, conversation) == []
    assert await nav.get_by_role("link", name="Words, words").count() == 0

    # Log out.
    await page.get_by_role("button", name="Log out").click()
    await page.get_by_role("button", name="Log in").wait_for()
    await shots.take(page, "logged-out")
    assert person.problems == []
    assert site.outside == []


async def test_html_in_a_reply_is_shown_as_text(site: Site, new_context: Any, shots: Shots) -> None:
    context = await new_context()
    person = Person(await context.new_page())
    page = person.page
    await person.open()
    await person.register(new_email())
    # The mock repeats the message: its reply holds the same HTML and Markdown link.
    await person.send(
        "<img src=x onerror=window.__pwned=1> [click](javascript:window.__pwned=2) "
        "<script>window.__pwned=3</script>"
    )
    await person.wait_reply_done()
    reply = person.replies().last
    text = await reply.locator(".body").inner_text()
    assert "<img src=x onerror=window.__pwned=1>" in text
    assert "<script>" in text
    assert await page.locator("#message-list img, #message-list script").count() == 0
    link = reply.get_by_text("click")
    assert await link.get_attribute("href") is None
    await link.click()
    user = await person.articles().first.locator(".body").inner_text()
    assert "<img src=x onerror=window.__pwned=1>" in user
    assert await page.evaluate("window.__pwned") is None
    await shots.take(page, "html-as-text")
    assert person.problems == []


async def test_keyboard_alone(site: Site, new_context: Any, shots: Shots) -> None:
    context = await new_context(viewport={"width": 375, "height": 740})
    person = Person(await context.new_page())
    page = person.page
    keys = page.keyboard
    await person.open()
    await page.get_by_label("Email").wait_for()
    assert await page.evaluate("document.activeElement.id") == "email"
    await keys.type(new_email())
    await keys.press("Tab")
    await keys.type("SecurePass123")
    await keys.press("Tab")  # Log in
    await keys.press("Tab")  # Register
    await keys.press("Enter")
    # Logged in, the message box has the focus.
    await page.wait_for_function("() => document.activeElement.id === 'message'")
    await keys.type("Typed, not clicked.")
    await keys.press("Enter")
    await person.wait_reply_done(at_least=1)
    assert "Typed, not clicked." in await person.last_reply_text()
    # Tab from the message box reaches Log out, and Enter uses it.
    for _ in range(30):
        await keys.press("Shift+Tab")
        if await page.evaluate("document.activeElement.textContent") == "Log out":
            break
    else:
        pytest.fail("Log out cannot be reached with the keyboard")
    await shots.take(page, "focus-on-log-out")
    await keys.press("Enter")
    await page.get_by_role("button", name="Log in").wait_for()
    assert person.problems == []


# In the page: wait until the clock reads `at`, then make an authenticated request through
# the page's own API module (the same module instance the page uses).
AT_ONCE = """async (at) => {
  const api = await import('/static/app/api.js');
  while (Date.now() < at) await new Promise((r) => setTimeout(r, 1));
  return (await api.fetchAuthed('GET', '/api/v1/auth/me')).status;
}"""


class TestTwoTabs:
    @pytest.fixture
    def site_settings(self) -> dict[str, Any]:
        # Access tokens live 4 s here; the tabs share one login for 3 of those lifetimes.
        return {"mock_token_delay_ms": 0, "access_token_minutes": 4 / 60}

    async def test_two_tabs_stay_logged_in_past_the_token_lifetime(
        self, site: Site, new_context: Any, shots: Shots
    ) -> None:
        context = await new_context()
        first = Person(await context.new_page())
        await first.open()
        await first.register(new_email())
        second = Person(await context.new_page())
        await second.open()
        await second.page.get_by_role("button", name="Log out").wait_for()
        refreshes: list[int] = []
        for person in (first, second):
            person.page.on(
                "response",
                lambda r: refreshes.append(r.status) if r.url.endswith("/auth/refresh") else None,
            )

        for _ in range(3):
            # Both tabs' tokens have expired; both ask for /auth/me at the same instant.
            await asyncio.sleep(4.5)
            at = await first.page.evaluate("Date.now() + 300")
            statuses = await asyncio.gather(
                *(person.page.evaluate(AT_ONCE, at) for person in (first, second))
            )
            assert statuses == [200, 200]
        for n, person in enumerate((first, second)):
            await person.send(f"Tab {n} is still logged in")
            await person.wait_reply_done()
        for person in (first, second):
            assert await person.page.get_by_role("button", name="Log out").is_visible()
            assert person.problems == []
        assert refreshes and all(status == 200 for status in refreshes), refreshes
        await shots.take(second.page, "second-tab")
