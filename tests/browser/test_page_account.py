"""SPEC 16 with SPEC 13: the refresh token lives in the `alice_refresh` cookie (never in the
page's storage), and the account dialog changes the password, lists and ends sessions, and
deletes the account. Skipped where the server does not have those routes yet."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser.conftest import Shots, Site, axe_violations
from tests.browser.pagekit import Person, new_email
from tests.conftest import PASSWORD

NEW_PASSWORD = "EvenBetterPass456"


def _has(site: Site, path: str, method: str) -> bool:
    return any(
        getattr(r, "path", None) == path and method in getattr(r, "methods", ())
        for r in site.app.routes
    )


@pytest.fixture
def account_routes(site: Site) -> None:
    if not (
        _has(site, "/api/v1/auth/sessions", "GET")
        and _has(site, "/api/v1/auth/password", "POST")
        and _has(site, "/api/v1/auth/me", "DELETE")
    ):
        pytest.skip("the account routes of SPEC 13 are not on this server yet")


async def _refresh_cookie(context: Any) -> dict[str, Any] | None:
    cookies = [c for c in await context.cookies() if c["name"] == "alice_refresh"]
    return cookies[0] if cookies else None


async def test_the_refresh_token_is_a_cookie_the_page_cannot_read(
    site: Site, new_context: Any, account_routes: None
) -> None:
    context = await new_context()
    person = Person(await context.new_page())
    page = person.page
    await person.open()
    await person.register(new_email())
    cookie = await _refresh_cookie(context)
    assert cookie is not None
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/api/v1/auth"
    stored = await page.evaluate(
        "() => JSON.stringify({...localStorage}) + JSON.stringify({...sessionStorage})"
        " + document.cookie"
    )
    assert "eyJ" not in stored  # no JWT anywhere a script can read
    # A reload keeps the login (the cookie), and logging out clears it.
    await page.reload()
    await page.get_by_role("button", name="Log out").click()
    await page.get_by_role("button", name="Log in").wait_for()
    assert await _refresh_cookie(context) is None
    await page.reload()
    await page.get_by_role("button", name="Log in").wait_for()
    assert person.problems == []


async def test_account_password_sessions_and_deletion(
    site: Site, new_context: Any, shots: Shots, account_routes: None
) -> None:
    email = new_email()
    context = await new_context()
    person = Person(await context.new_page())
    page = person.page
    await person.open()
    await person.register(email)
    # The same person on another device: a second session.
    other_context = await new_context()
    other = Person(await other_context.new_page())
    await other.open()
    await other.log_in(email)

    await page.get_by_role("button", name="Account").click()
    dialog = page.get_by_role("dialog", name="Account")
    await dialog.get_by_role("button", name="End session").wait_for()
    assert await dialog.get_by_role("listitem").count() == 2
    await shots.take(page, "account")
    assert await axe_violations(page) == []

    # End the other session: the other device is logged out at its next request.
    await dialog.get_by_role("button", name="End session").click()
    await dialog.get_by_text("Session ended.").wait_for()
    await expect(dialog.get_by_role("listitem")).to_have_count(1)
    await other.page.reload()
    await other.page.get_by_role("button", name="Log in").wait_for()

    # A wrong current password is refused in words; the right one changes it.
    await dialog.get_by_label("Current password").fill("NotMyPassword1")
    await dialog.get_by_label("New password").fill(NEW_PASSWORD)
    await dialog.get_by_role("button", name="Change password").click()
    await dialog.get_by_text("That password is not right.").wait_for()
    await dialog.get_by_label("Current password").fill(PASSWORD)
    await dialog.get_by_role("button", name="Change password").click()
    await dialog.get_by_text("Password changed.").wait_for()
    await dialog.get_by_role("button", name="Close").click()
    # This tab stays logged in, through a reload too (its new session's cookie).
    await page.reload()
    await page.get_by_role("button", name="Log out").wait_for()
    await other.log_in(email, NEW_PASSWORD)

    # Delete the account: confirmed with the password, then gone for good.
    await page.get_by_role("button", name="Account").click()
    await dialog.get_by_label("Confirm with your password").fill(NEW_PASSWORD)
    await dialog.get_by_role("button", name="Delete account").click()
    await page.get_by_role("button", name="Yes, delete").click()
    await page.get_by_role("button", name="Log in").wait_for()
    await shots.take(page, "deleted")
    await other.page.reload()
    await other.page.get_by_role("button", name="Log in").wait_for()
    await person.log_in_fails(email, NEW_PASSWORD)
    assert person.problems == [] and other.problems == []
