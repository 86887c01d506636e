"""A page on another origin (ALICE_CORS_ORIGINS): what its stream requests need."""

from __future__ import annotations

from asgi_lifespan import LifespanManager

from alice.main import create_app
from tests.chatkit import CHAT
from tests.conftest import client_for

PAGE = "https://app.example.com"


async def test_a_page_of_an_allowed_origin_may_send_the_stream_headers(make_settings):
    app = create_app(make_settings(cors_origins=f"{PAGE}, https://other.example.com"))
    async with LifespanManager(app), client_for(app) as client:
        resp = await client.options(
            f"{CHAT}/message",
            headers={
                "Origin": PAGE,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, "
                "idempotency-key, last-event-id",
            },
        )
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == PAGE
        allowed = resp.headers["access-control-allow-headers"].lower()
        for header in ("authorization", "idempotency-key", "last-event-id"):
            assert header in allowed
        resp = await client.get("/health", headers={"Origin": PAGE})
        exposed = resp.headers["access-control-expose-headers"].lower()
        assert {"x-request-id", "retry-after", "x-ratelimit-remaining"} <= set(
            h.strip() for h in exposed.split(",")
        )
        # Another origin is not allowed.
        resp = await client.options(
            f"{CHAT}/message",
            headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in resp.headers
