"""The browser side of ALICE, served by the backend itself (SPEC 8 and 16): the chat page and
the API docs pages (`pages/`, HTML documents answered by `alice.api.pages`), and the files they
load (`static/`: our CSS and ES modules, and third-party code vendored from npm at pinned
versions with its licences, see `scripts/vendor-npm.sh`). No build step, nothing from a CDN."""

from __future__ import annotations

from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent
PAGES_DIR = WEB_DIR / "pages"
STATIC_DIR = WEB_DIR / "static"
