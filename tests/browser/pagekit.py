"""Steps a person takes on the chat page, for the browser tests."""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import PASSWORD

CHAT = "/api/v1/chat"

# Records, inside the page, the text of the last reply each time it changes.
WATCH_REPLY = """() => {
  window.__replyTexts = [];
  const list = document.getElementById('message-list');
  const seen = () => {
    const bodies = list.querySelectorAll('article[data-role=assistant] .body');
    const text = bodies.length ? bodies[bodies.length - 1].textContent : '';
    const all = window.__replyTexts;
    if (text && all[all.length - 1] !== text) all.push(text);
  };
  new MutationObserver(seen).observe(list, {childList: true, subtree: true, characterData: true});
}"""


def new_email() -> str:
    return f"person-{uuid.uuid4().hex[:10]}@example.com"


class Person:
    """One browser tab of one person, with its problems (page errors, CSP refusals) kept."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        self.replies_before = 0
        page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        text = msg.text
        # A refused request is logged as an error by the browser; the page shows it in words.
        if msg.type == "error" and "Failed to load resource" not in text:
            self.problems.append(f"console: {text}")

    async def open(self) -> None:
        await self.page.goto("/")

    async def register(self, email: str, password: str = PASSWORD) -> None:
        await self.page.get_by_label("Email").fill(email)
        await self.page.get_by_label("Password").fill(password)
        await self.page.get_by_role("button", name="Register").click()
        await self.page.get_by_role("button", name="Log out").wait_for()

    async def log_in(self, email: str, password: str = PASSWORD) -> None:
        await self.page.get_by_label("Email").fill(email)
        await self.page.get_by_label("Password").fill(password)
        await self.page.get_by_role("button", name="Log in").click()
        await self.page.get_by_role("button", name="Log out").wait_for()

    async def log_in_fails(self, email: str, password: str = PASSWORD) -> None:
        await self.page.get_by_label("Email").fill(email)
        await self.page.get_by_label("Password").fill(password)
        await self.page.get_by_role("button", name="Log in").click()
        await self.page.get_by_role("alert").filter(has_text="do not match").wait_for()

    def conversation(self) -> Any:
        return self.page.get_by_role("region", name="Conversation")

    def articles(self) -> Any:
        return self.conversation().get_by_role("article")

    def replies(self) -> Any:
        return self.page.locator("#message-list article[data-role=assistant]")

    async def watch_reply(self) -> None:
        await self.page.evaluate(WATCH_REPLY)

    async def reply_texts(self) -> list[str]:
        return list(await self.page.evaluate("window.__replyTexts"))

    async def send(self, text: str) -> None:
        self.replies_before = await self.replies().count()
        await self.page.get_by_label("Message").fill(text)
        await self.page.get_by_role("button", name="Send").click()

    async def wait_reply_started(self, words: int = 3) -> None:
        """Until the last reply shows at least `words` words."""
        await self.page.wait_for_function(
            "n => { const b = [...document.querySelectorAll("
            "'#message-list article[data-role=assistant] .body')].pop();"
            " return b && b.textContent.trim().split(/\\s+/).length >= n; }",
            arg=words,
        )

    async def wait_reply_done(self, at_least: int | None = None) -> None:
        """Until the last reply (at least the `at_least`th, default: one more than before
        the last send) is no longer being written, and Send is back."""
        count = self.replies_before + 1 if at_least is None else at_least
        await self.page.wait_for_function(
            "n => { const r = document.querySelectorAll("
            "'#message-list article[data-role=assistant]');"
            " return r.length >= n && r[r.length - 1].dataset.status !== 'streaming'; }",
            arg=count,
        )
        await self.page.get_by_role("button", name="Send").wait_for()

    async def last_reply_text(self) -> str:
        return " ".join((await self.replies().last.locator(".body").inner_text()).split())
