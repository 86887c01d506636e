"""Browser tests: Playwright for Python driving Debian's Chromium (`apt-get install chromium`;
Playwright's own browser download cannot work offline). Skipped, with the reason in the run's
summary, when Chromium or Playwright is missing; `.ci/run` installs Chromium so CI always runs
them. `ALICE_TEST_CHROMIUM` names another Chromium binary.

The app runs on a loopback socket in the test's own event loop (`tests.conftest.serve`) and
Playwright's async API drives the browser from that loop too, so a test can reach the services
directly (`site.app.state.services`) while the page talks to them over HTTP. SQLite only: the
page is a client of the API, whose backends the rest of the suite tests on both.

Every request to anywhere but the app is aborted and recorded (`site.outside`): the pages must
work on a machine without internet. Screenshots go to the test's own tmp_path (never the
repository): `pytest --basetemp=out/` keeps them in a folder of your choosing."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from alice.core.config import Settings
from tests.conftest import serve

CHROMIUM = os.environ.get("ALICE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"


def _missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright is not installed (make .venv/.installed)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    return None


MISSING = _missing()
HERE = Path(__file__).parent
# Without Playwright the test modules cannot even be imported: leave them out (the summary
# still says why).
collect_ignore_glob = ["test_*.py"] if MISSING and MISSING.startswith("Playwright") else []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MISSING is None:
        return
    skip = pytest.mark.skip(reason=f"browser tests skipped: {MISSING}")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MISSING is not None:
        terminalreporter.write_line(f"BROWSER TESTS SKIPPED: {MISSING}", yellow=True, bold=True)


@pytest.fixture
def backend() -> str:
    """The page is an API client: one backend is enough (overrides the parametrized one)."""
    return "sqlite"


@dataclass
class Site:
    app: FastAPI
    url: str
    outside: list[str] = field(default_factory=list)  # requests aborted for leaving the app

    @property
    def services(self) -> Any:
        return self.app.state.services


@pytest.fixture
def site_settings() -> dict[str, Any]:
    """Settings for this test's app; override in a test module for other values."""
    return {}


@pytest.fixture
async def site(
    make_settings: Callable[..., Settings], site_settings: dict[str, Any]
) -> AsyncIterator[Site]:
    settings = make_settings(**{"mock_token_delay_ms": 40, **site_settings})
    async with serve(settings) as (application, url):
        yield Site(application, url)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def new_context(browser: Any, site: Site) -> Callable[..., Any]:
    """A browser context (one person's profile) that can reach the app and nothing else."""

    async def make(origin: str | None = None, **options: Any) -> Any:
        origin = origin or site.url
        context = await browser.new_context(base_url=origin, **options)

        async def only_the_app(route: Any) -> None:
            url = route.request.url
            if url.startswith(origin + "/") or url == origin:
                await route.continue_()
            elif url.startswith(("data:", "blob:")):
                await route.continue_()
            else:
                site.outside.append(url)
                await route.abort("blockedbyclient")

        await context.route("**/*", only_the_app)
        return context

    return make


class CuttableLink:
    """A TCP relay between the browser and the app whose every connection the test can cut
    at once, then refuse new ones until `restore()`: the network lost, as the page sees it
    (Chromium's offline emulation leaves open responses running)."""

    def __init__(self, target_url: str) -> None:
        host, port = target_url.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.down = False
        self.cuts = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> CuttableLink:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    def cut(self) -> None:
        self.down = True
        self.cuts += 1
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.down = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class Shots:
    """Screenshots of a test's steps, numbered in order, under its tmp_path."""

    folder: Path
    count: int = 0

    async def take(self, page: Any, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return Shots(folder)


async def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the page as it is now. axe is evaluated as
    a script (not a <script> tag, which the page's Trusted Types policy would refuse)."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE.read_text())
    result = await page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' '))}))"
    )
    return [v for v in result if v["impact"] in ("serious", "critical")]
