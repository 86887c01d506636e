"""SPEC section 15: models, tokens per reply, usage per UTC day, budgets."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from asgi_lifespan import LifespanManager

from alice.core.config import Settings
from alice.main import create_app
from tests.conftest import client_for

USAGE = "/api/v1/auth/me/usage"
MODELS = "/api/v1/chat/models"


class Clock:
    """An injected clock: `now` moves only when a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def user_id_of(client, headers) -> uuid.UUID:
    return uuid.UUID((await client.get("/api/v1/auth/me", headers=headers)).json()["id"])


async def add_usage(app, user_id, input_tokens, output_tokens, replies=1) -> None:
    stmt, params = app.state.services.usage.record_statement(
        user_id, input_tokens, output_tokens, replies
    )
    async with app.state.services.engine.begin() as conn:
        await conn.execute(stmt, params)


def test_models_default_to_ai_model_and_must_name_one():
    assert Settings(ai_model="m-one").ai_model_list == ["m-one"]
    s = Settings(ai_model="m-one", ai_models=" a , b,a ,, c ")
    assert s.ai_model_list == ["a", "b", "c"]
    with pytest.raises(ValueError, match="ALICE_AI_MODELS"):
        Settings(ai_models=" , ")


async def test_models_route_lists_the_default_first(settings):
    app = create_app(settings.model_copy(update={"ai_models": "claude-b,claude-a"}))
    async with LifespanManager(app), client_for(app) as client:
        pair = await app.state.services.auth.register(
            f"m-{uuid.uuid4().hex[:8]}@example.com", "SecurePass123", None
        )
        resp = await client.get(MODELS, headers={"Authorization": f"Bearer {pair.access_token}"})
        assert resp.status_code == 200
        assert resp.json() == {
            "items": [{"id": "claude-b", "default": True}, {"id": "claude-a", "default": False}]
        }
        assert (await client.get(MODELS)).status_code == 401


async def test_usage_days_oldest_first_with_zeros_and_no_budget(app, client, user):
    usage = app.state.services.usage
    usage.clock = Clock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))
    uid = await user_id_of(client, user.headers)
    await add_usage(app, uid, 100, 20)
    await add_usage(app, uid, 5, 1)
    usage.clock.now -= timedelta(days=2)
    await add_usage(app, uid, 7, 3, replies=2)
    usage.clock.now += timedelta(days=2)
    body = (await client.get(USAGE, params={"days": 3}, headers=user.headers)).json()
    assert body == {
        "items": [
            {"date": "2026-03-08", "input_tokens": 7, "output_tokens": 3, "replies": 2},
            {"date": "2026-03-09", "input_tokens": 0, "output_tokens": 0, "replies": 0},
            {"date": "2026-03-10", "input_tokens": 105, "output_tokens": 21, "replies": 2},
        ],
        "budget": None,
    }
    default = (await client.get(USAGE, headers=user.headers)).json()["items"]
    assert len(default) == 30 and default[-1]["date"] == "2026-03-10"
    assert default[0]["date"] == (date(2026, 3, 10) - timedelta(days=29)).isoformat()


@pytest.mark.parametrize("days", [0, 91, "x"])
async def test_usage_days_out_of_range_is_422(client, user, days):
    resp = await client.get(USAGE, params={"days": days}, headers=user.headers)
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "query.days"


async def test_another_users_usage_is_not_counted(app, client, make_user):
    a, b = await make_user(), await make_user()
    await add_usage(app, await user_id_of(client, a.headers), 50, 50)
    items = (await client.get(USAGE, params={"days": 1}, headers=b.headers)).json()["items"]
    assert items[0]["input_tokens"] == 0 and items[0]["replies"] == 0


async def test_deleting_the_account_takes_its_ledger_and_search_index(app, client, user, backend):
    from sqlalchemy import text

    from tests.chatkit import send

    uid = await user_id_of(client, user.headers)
    await send(client, user.access_token, "remember me")
    resp = await client.request(
        "DELETE", "/api/v1/auth/me", json={"password": user.password}, headers=user.headers
    )
    assert resp.status_code == 204, resp.text
    async with app.state.services.engine.connect() as conn:
        for table in ("usage_daily", "search_docs"):
            left = await conn.scalar(
                text(f"SELECT count(*) FROM {table} WHERE user_id = :u"),  # noqa: S608
                {"u": uid.hex if backend == "sqlite" else uid},
            )
            assert left == 0, table
        if backend == "sqlite":
            fts = await conn.scalar(
                text("SELECT count(*) FROM search_fts WHERE search_fts MATCH :m"),
                {"m": f'owner:"u{uid.hex}"'},
            )
            assert fts == 0
