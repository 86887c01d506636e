"""The HTML documents and their assets, over HTTP (the browser tests are in tests/browser):
each document's Content-Security-Policy, no inline script or style in them, vendored files as
the npm registry shipped them with their licences."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import pytest

from alice.web import PAGES_DIR, STATIC_DIR

ROOT = Path(__file__).resolve().parent.parent
VENDOR_DIRS = sorted(
    [*(STATIC_DIR / "vendor").iterdir(), *(ROOT / "tests" / "browser" / "vendor").iterdir()]
)


def _directives(csp: str) -> dict[str, str]:
    return {part.split()[0]: part.strip() for part in csp.split(";") if part.strip()}


async def test_chat_page_policy_allows_no_inline_code_and_enforces_trusted_types(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = _directives(response.headers["content-security-policy"])
    assert csp["default-src"] == "default-src 'none'"
    assert csp["script-src"] == "script-src 'self'"
    assert csp["style-src"] == "style-src 'self'"
    assert csp["frame-ancestors"] == "frame-ancestors 'none'"
    assert csp["require-trusted-types-for"] == "require-trusted-types-for 'script'"
    assert "unsafe" not in response.headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_pages_allow_no_inline_script(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    csp = _directives(response.headers["content-security-policy"])
    assert csp["script-src"] == "script-src 'self'"
    assert csp["default-src"] == "default-src 'none'"
    assert "cdn" not in response.text


@pytest.mark.parametrize("document", sorted(p.name for p in PAGES_DIR.glob("*.html")))
def test_documents_have_no_inline_script_or_style(document: str) -> None:
    html = (PAGES_DIR / document).read_text()
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, f"{document}: inline script {tag}"
    assert "<style" not in html
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"


async def test_static_modules_are_served_as_javascript(client: httpx.AsyncClient) -> None:
    for path in (
        "/static/vendor/dompurify-3.4.18/purify.es.mjs",
        "/static/vendor/marked-18.2.1/marked.esm.js",
        "/static/docs/swagger-init.js",
    ):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/javascript"), path


async def test_static_files_stay_inside_their_folder(client: httpx.AsyncClient) -> None:
    # httpx would fold a literal "..": the encoded form reaches the app as written.
    for path in ("/static/%2e%2e/__init__.py", "/static/%2e%2e/%2e%2e/cli.py"):
        response = await client.get(path)
        assert response.status_code == 404, path


@pytest.mark.parametrize("folder", VENDOR_DIRS, ids=lambda p: p.name)
def test_vendored_files_are_as_pinned_with_their_licence(folder: Path) -> None:
    lines = (folder / "VENDOR.txt").read_text().splitlines()
    name_version = folder.name.rsplit("-", 1)
    assert lines[0].startswith(f"# {name_version[0]} {name_version[1]} from the npm registry")
    listed = {}
    for line in lines[1:]:
        digest, filename = line.split("  ", 1)
        listed[filename] = digest
    assert "LICENSE" in listed
    on_disk = {p.name for p in folder.iterdir()} - {"VENDOR.txt"}
    assert on_disk == set(listed)
    for filename, digest in listed.items():
        assert hashlib.sha256((folder / filename).read_bytes()).hexdigest() == digest, filename
