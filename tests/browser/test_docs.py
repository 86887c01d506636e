"""SPEC 8: /docs and /redoc show the API's operations from vendored assets, with every
request to anywhere but the backend blocked (a machine without internet)."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import Site

# ReDoc's sidebar always shows a "Redocly" logo from its CDN (an <img> that hides itself when
# it fails to load): the page's policy refuses it, so it is never fetched.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


async def _watch(page: Any) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))

    def console(msg: Any) -> None:
        if msg.type == "error" and not msg.text.startswith(f"Loading the image '{REDOC_LOGO}'"):
            problems.append(f"console: {msg.text}")

    page.on("console", console)
    return problems


async def test_swagger_ui_shows_the_operations_offline(
    site: Site, new_context: Any, shots: Any
) -> None:
    context = await new_context()
    page = await context.new_page()
    problems = await _watch(page)
    response = await page.goto("/docs")
    assert response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "unsafe-eval" not in response.headers["content-security-policy"]
    operation = page.locator(".opblock-summary-path", has_text="/api/v1/auth/login")
    await operation.first.wait_for()
    assert await page.locator(".opblock").count() >= 10
    await page.get_by_text("/api/v1/chat/message", exact=True).first.wait_for()
    await shots.take(page, "swagger-ui")
    assert site.outside == []
    assert problems == []


async def test_redoc_shows_the_operations_offline(site: Site, new_context: Any, shots: Any) -> None:
    context = await new_context()
    page = await context.new_page()
    problems = await _watch(page)
    response = await page.goto("/redoc")
    assert response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    # ReDoc's side menu lists each operation by its summary, and the body describes each.
    await page.locator("[role=menuitem]", has_text="Login").first.wait_for()
    await page.locator("h2", has_text="Login").first.wait_for()
    assert await page.locator("[role=menuitem] >> text=/^(post|get|patch|delete)$/i").count() >= 10
    await shots.take(page, "redoc")
    assert site.outside == []
    assert problems == []


async def test_docs_pages_name_no_outside_address(site: Site) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=site.url) as client:
        for path in ("/docs", "/redoc"):
            body = (await client.get(path)).text
            assert "http://" not in body and "https://" not in body, path
