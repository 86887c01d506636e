"""SPEC section 15 on the reply path: the model a message chooses, the tokens each reply
spends (message, ledger, metrics), and the budgets that refuse a reply before its stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

from alice.main import create_app
from alice.models import Message
from alice.services.ai.base import ChatTurn
from alice.services.ai.mock import mock_input_tokens, mock_reply, mock_tokens
from tests.chatkit import (
    CHAT,
    background_send,
    eventually,
    messages,
    nonce,
    provider_request,
    read_stream,
    send,
)
from tests.conftest import PASSWORD, UserSession, client_for, serve
from tests.fakes.anthropic_server import DEFAULT_TOKENS, input_tokens_for
from tests.test_usage import USAGE, Clock

SYSTEM = "You are ALICE, a helpful AI assistant."


def mock_cost(content: str) -> int:
    """What the mock reports for a first message: its input plus its output tokens."""
    turns = [ChatTurn("user", content)]
    return mock_input_tokens(SYSTEM, turns) + len(mock_tokens(mock_reply(turns)))


@asynccontextmanager
async def app_with(settings, **overrides: Any) -> AsyncIterator[tuple[Any, Any]]:
    """The app with request limits off (budgets must hold without them) and `overrides`."""
    s = settings.model_copy(update={"rate_limit_enabled": False, **overrides})
    application = create_app(s)
    async with LifespanManager(application), client_for(application) as client:
        yield application, client


async def new_user(app) -> UserSession:
    email = f"b-{uuid.uuid4().hex[:10]}@example.com"
    pair = await app.state.services.auth.register(email, PASSWORD, None)
    return UserSession(email, PASSWORD, pair.access_token, pair.refresh_token)


# --- models ---------------------------------------------------------------------------------


async def test_chosen_model_is_kept_by_the_conversation_and_sent_to_the_api(
    settings, ai_settings, fake_anthropic
):
    s = settings.model_copy(
        update={**ai_settings, "ai_models": "claude-a,claude-b", "rate_limit_enabled": False}
    )
    async with serve(s) as (application, url):
        user = await new_user(application)
        async with client_for(application) as c:
            tag = nonce()
            body = {"content": f"first {tag}", "model": "claude-b"}
            resp = await c.post(f"{CHAT}/message", json=body, headers=user.headers)
            assert resp.status_code == 200
            assert provider_request(fake_anthropic, tag).body["model"] == "claude-b"
            conv = (await c.get(f"{CHAT}/conversations", headers=user.headers)).json()["items"][0]
            assert conv["model"] == "claude-b"
            # A later message without a model: the conversation's.
            tag2 = nonce()
            await send(c, user.access_token, f"again {tag2}", conv["id"])
            assert provider_request(fake_anthropic, tag2).body["model"] == "claude-b"
            items = await messages(c, user.access_token, conv["id"])
            assert [m["model"] for m in items] == [None, "claude-b", None, "claude-b"]
            # A new conversation without one: the default, the first of ALICE_AI_MODELS.
            tag3 = nonce()
            await send(c, user.access_token, f"other {tag3}")
            assert provider_request(fake_anthropic, tag3).body["model"] == "claude-a"
            # Choosing another model in the conversation changes what it keeps.
            tag4 = nonce()
            body = {"content": f"switch {tag4}", "conversation_id": conv["id"], "model": "claude-a"}
            resp = await c.post(f"{CHAT}/message", json=body, headers=user.headers)
            assert provider_request(fake_anthropic, tag4).body["model"] == "claude-a"
            convs = (await c.get(f"{CHAT}/conversations", headers=user.headers)).json()["items"]
            assert {x["id"]: x["model"] for x in convs}[conv["id"]] == "claude-a"


async def test_a_model_not_offered_is_422_and_nothing_is_stored(settings):
    async with app_with(settings, ai_models="m-one,m-two") as (app, client):
        user = await new_user(app)
        for model in ("m-three", "", "M-ONE"):
            resp = await client.post(
                f"{CHAT}/message", json={"content": "hi", "model": model}, headers=user.headers
            )
            assert resp.status_code == 422, resp.text
            assert resp.json()["errors"][0]["field"] == "body.model"
        convs = (await client.get(f"{CHAT}/conversations", headers=user.headers)).json()
        assert convs["items"] == []


async def test_the_mock_honours_the_chosen_model(settings):
    async with app_with(settings, ai_models="mock-a,mock-b") as (app, client):
        user = await new_user(app)
        default = await send(client, user.access_token, "hello")
        assert "as mock" not in default.text
        chosen = await read_stream(
            client,
            "POST",
            f"{CHAT}/message",
            headers=user.headers,
            json_body={"content": "hello", "model": "mock-b"},
        )
        assert "running in mock mode as mock-b. You said: hello" in chosen.text


# --- usage ----------------------------------------------------------------------------------


async def test_tokens_are_stored_as_the_provider_reports_them(
    settings, ai_settings, fake_anthropic, backend
):
    s = settings.model_copy(update={**ai_settings, "rate_limit_enabled": False})
    async with serve(s) as (application, url), client_for(application) as c:
        user = await new_user(application)
        tag = nonce()
        stream = await send(c, user.access_token, f"count {tag}")
        record = provider_request(fake_anthropic, tag)
        assert record.input_tokens == input_tokens_for(record.body)
        async with application.state.services.sessions() as session:
            reply = await session.get(Message, stream.message_id)
        assert (reply.input_tokens, reply.output_tokens) == (record.input_tokens, DEFAULT_TOKENS)
        assert reply.model == application.state.services.settings.ai_model
        today = (await c.get(USAGE, params={"days": 1}, headers=user.headers)).json()["items"][0]
        assert today["input_tokens"] == record.input_tokens
        assert (today["output_tokens"], today["replies"]) == (DEFAULT_TOKENS, 1)
        metrics = (await c.get("/metrics")).text
        model = application.state.services.settings.ai_model
        assert f'alice_ai_tokens_total{{kind="output",model="{model}"}}' in metrics


async def test_mock_usage_counts_and_survives_deleting_the_conversation(settings):
    async with app_with(settings) as (app, client):
        user = await new_user(app)
        stream = await send(client, user.access_token, "alpha beta")
        done = stream.data(-1)
        assert done["total_tokens"] == mock_cost("alpha beta")
        before = (await client.get(USAGE, params={"days": 1}, headers=user.headers)).json()
        day = before["items"][0]
        assert day["input_tokens"] + day["output_tokens"] == mock_cost("alpha beta")
        assert day["replies"] == 1
        resp = await client.delete(
            f"{CHAT}/conversations/{stream.conversation_id}", headers=user.headers
        )
        assert resp.status_code == 204
        after = (await client.get(USAGE, params={"days": 1}, headers=user.headers)).json()
        assert after == before


# --- the daily budget -----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [0, 1])
async def test_daily_budget_spent_at_the_limit_refuses_until_utc_midnight(settings, extra):
    cost = mock_cost("spend it")
    async with app_with(settings, user_daily_tokens=cost + extra) as (app, client):
        clock = Clock(datetime(2026, 5, 1, 23, 59, 30, 250_000, tzinfo=UTC))
        app.state.services.usage.clock = clock
        user = await new_user(app)
        first = await send(client, user.access_token, "spend it")
        assert first.terminal.event == "done"
        usage = (await client.get(USAGE, params={"days": 1}, headers=user.headers)).json()
        assert usage["budget"] == {
            "daily_tokens": cost + extra,
            "spent_today": cost,
            "resets_at": "2026-05-02T00:00:00Z",
        }
        if extra:
            # One token left: the next reply may start (and finish over the budget).
            second = await send(client, user.access_token, "spend it")
            assert second.terminal.event == "done"
        refused = await send(client, user.access_token, "one more")
        assert refused.status == 429 and refused.body["code"] == "QUOTA_EXCEEDED"
        assert refused.headers["retry-after"] == "30"  # 29.75 s to midnight, rounded up
        assert "text/event-stream" not in refused.headers["content-type"]
        convs = (await client.get(f"{CHAT}/conversations", headers=user.headers)).json()
        assert len(convs["items"]) == 1 + extra  # the refused message stored nothing
        # Midnight UTC: a new day, a new budget.
        clock.now = datetime(2026, 5, 2, 0, 0, 0, tzinfo=UTC)
        again = await send(client, user.access_token, "new day")
        assert again.terminal.event == "done"
        usage = (await client.get(USAGE, params={"days": 2}, headers=user.headers)).json()
        spent = [d["input_tokens"] + d["output_tokens"] for d in usage["items"]]
        assert spent == [cost * (1 + extra), mock_cost("new day")]


async def test_budget_is_per_user_and_deleting_refunds_nothing(settings):
    cost = mock_cost("spend it")
    async with app_with(settings, user_daily_tokens=cost) as (app, client):
        spender, other = await new_user(app), await new_user(app)
        first = await send(client, spender.access_token, "spend it")
        await client.delete(
            f"{CHAT}/conversations/{first.conversation_id}", headers=spender.headers
        )
        refused = await send(client, spender.access_token, "spend it")
        assert refused.status == 429 and refused.body["code"] == "QUOTA_EXCEEDED"
        assert (await send(client, other.access_token, "mine")).terminal.event == "done"


async def test_budgets_are_off_by_default(settings):
    async with app_with(settings) as (app, client):
        user = await new_user(app)
        for i in range(3):
            assert (await send(client, user.access_token, f"m{i}")).terminal.event == "done"
        assert (await client.get(USAGE, headers=user.headers)).json()["budget"] is None


# --- running replies ------------------------------------------------------------------------


async def test_twenty_simultaneous_messages_with_a_cap_of_three_start_exactly_three(
    settings, ai_settings, fake_anthropic
):
    s = settings.model_copy(
        update={**ai_settings, "rate_limit_enabled": False, "user_max_running_replies": 3}
    )
    async with serve(s) as (application, url):
        user = await new_user(application)
        # A real socket: the in-memory transport would wait for each whole response.
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            tag = nonce()
            started = [
                background_send(c, user.access_token, f"[[hang]] {tag} {i}") for i in range(20)
            ]
            await eventually(lambda: all(out.status for out, _ in started), timeout=20)
            statuses = sorted(out.status for out, _ in started)
            assert statuses == [200] * 3 + [429] * 17, statuses
            refused = [out for out, _ in started if out.status == 429]
            assert {out.body["code"] for out in refused} == {"TOO_MANY_GENERATIONS"}
            assert {out.headers["retry-after"] for out in refused} == {"1"}
            running = [out for out, _ in started if out.status == 200]
            await eventually(lambda: all(out.events for out in running), timeout=10)
            # Another user is not held back by this one's cap.
            other = await new_user(application)
            assert (await send(c, other.access_token, "free")).terminal.event == "done"
            # Stopped replies give their slots back.
            for out in running:
                conv = out.data(0)["conversation_id"]
                resp = await c.post(f"{CHAT}/conversations/{conv}/stop", headers=user.headers)
                assert resp.status_code == 200
            await asyncio.gather(*(task for _, task in started))
            after = await send(c, user.access_token, "after the stop")
            assert after.terminal.event == "done"


async def test_the_cap_counts_nothing_for_a_refused_or_failed_start(settings):
    async with app_with(settings, user_max_running_replies=1) as (app, client):
        user = await new_user(app)
        for _ in range(3):
            resp = await client.post(
                f"{CHAT}/message",
                json={"content": "x", "conversation_id": str(uuid.uuid4())},
                headers=user.headers,
            )
            assert resp.status_code == 404
        for i in range(3):
            assert (await send(client, user.access_token, f"m{i}")).terminal.event == "done"


async def test_the_reply_ledger_uses_one_row_a_day(settings, backend):
    async with app_with(settings) as (app, client):
        user = await new_user(app)
        clock = Clock(datetime(2026, 1, 1, 12, tzinfo=UTC))
        app.state.services.usage.clock = clock
        for _ in range(2):
            await send(client, user.access_token, "a b")
        clock.now += timedelta(days=1)
        await send(client, user.access_token, "a b")
        from alice.models import UsageDay

        async with app.state.services.sessions() as session:
            rows = (await session.execute(select(UsageDay))).scalars().all()
        assert sorted((r.day.isoformat(), r.replies) for r in rows) == [
            ("2026-01-01", 2),
            ("2026-01-02", 1),
        ]


async def test_a_message_right_after_done_is_not_refused_by_the_cap(settings):
    """The slot is given back before the terminal event is sent: a client that sends its
    next message as soon as it reads `done` is never refused by a slot not yet released."""
    async with app_with(settings, user_max_running_replies=1) as (app, client):
        # Slots given back slowly (as over a slow Redis): what matters is the order.
        slots = app.state.services.slots
        acquire = slots.acquire

        async def slow_to_release(kind: str, key: str, limit: int) -> Any:
            slot = await acquire(kind, key, limit)
            if slot is None:
                return None

            class Slow:
                async def release(self) -> None:
                    await asyncio.sleep(0.3)
                    await slot.release()

            return Slow()

        slots.acquire = slow_to_release
        user = await new_user(app)
        conv = None
        for i in range(3):
            stream = await send(client, user.access_token, f"m{i}", conv)
            assert stream.status == 200, stream.body
            assert stream.terminal.event == "done"
            conv = stream.conversation_id
