"""The OpenAPI document (SPEC section 8): exact per route, valid, and good to generate from."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from alice.core.config import Settings
from alice.core.errors import ErrorCode
from alice.main import create_app
from tests.chatkit import CHAT
from tests.conftest import TEST_SETTINGS

AUTH = "/api/v1/auth"
C = "/api/v1/chat/conversations/{conversation_id}"
E = ErrorCode

# What every route answers beyond its own codes.
_500 = {500: {E.INTERNAL_ERROR}}
# A route with the bearer-token user (and its per-user limit).
_USER = {
    401: {E.UNAUTHORIZED, E.INVALID_TOKEN},
    403: {E.ACCOUNT_DISABLED},
    429: {E.RATE_LIMIT_EXCEEDED},
    503: {E.DATABASE_UNAVAILABLE},
    **_500,
}
_422 = {422: {E.VALIDATION_ERROR}}
_BODY = {413: {E.PAYLOAD_TOO_LARGE}, **_422}
_IP_LIMITED = {429: {E.RATE_LIMIT_EXCEEDED}, 503: {E.DATABASE_UNAVAILABLE}, **_500, **_BODY}
_404 = {404: {E.CONVERSATION_NOT_FOUND}}
_STREAM_503 = {503: {E.DATABASE_UNAVAILABLE, E.STREAM_UNAVAILABLE}}
# Routes that hash a password: a wait for a hashing turn past its bound is 503 SERVER_BUSY.
_HASHING = {503: {E.DATABASE_UNAVAILABLE, E.SERVER_BUSY}}

# Every operation: its statuses, exactly, each error status with exactly its codes (None for
# a success). A route added without a row here fails the first test: add its row.
EXPECTED: dict[tuple[str, str], dict[int, set[ErrorCode] | None]] = {
    (f"{AUTH}/register", "post"): {
        201: None,
        409: {E.EMAIL_ALREADY_EXISTS},
        **_IP_LIMITED,
        **_HASHING,
    },
    (f"{AUTH}/login", "post"): {
        200: None,
        401: {E.AUTHENTICATION_FAILED},
        403: {E.ACCOUNT_DISABLED},
        **_IP_LIMITED,
        **_HASHING,
    },
    (f"{AUTH}/refresh", "post"): {
        200: None,
        401: {E.INVALID_TOKEN},
        403: {E.ACCOUNT_DISABLED},
        **_IP_LIMITED,
    },
    (f"{AUTH}/logout", "post"): {204: None, **_USER},
    (f"{AUTH}/me", "get"): {200: None, **_USER},
    # Accounts (SPEC 13)
    (f"{AUTH}/me", "patch"): {200: None, **_USER, **_BODY},
    (f"{AUTH}/me", "delete"): {
        204: None,
        **_USER,
        **_BODY,
        403: {E.ACCOUNT_DISABLED, E.INVALID_PASSWORD},
        **_HASHING,
    },
    (f"{AUTH}/password", "post"): {
        200: None,
        **_USER,
        **_BODY,
        403: {E.ACCOUNT_DISABLED, E.INVALID_PASSWORD},
        **_HASHING,
    },
    (f"{AUTH}/sessions", "get"): {200: None, **_USER},
    (f"{AUTH}/sessions/{{session_id}}", "delete"): {
        204: None,
        **_USER,
        **_422,
        404: {E.SESSION_NOT_FOUND},
    },
    (f"{AUTH}/me/export", "get"): {200: None, **_USER},
    (f"{AUTH}/password/forgot", "post"): {
        202: None,
        429: {E.RATE_LIMIT_EXCEEDED},
        503: {E.MAIL_UNAVAILABLE},
        **_500,
        **_BODY,
    },
    (f"{AUTH}/password/reset", "post"): {
        200: None,
        401: {E.INVALID_TOKEN},
        **_IP_LIMITED,
        **_HASHING,
    },
    (f"{CHAT}/message", "post"): {
        200: None,
        204: None,
        **_USER,
        429: {E.RATE_LIMIT_EXCEEDED, E.QUOTA_EXCEEDED, E.TOO_MANY_GENERATIONS},
        **_BODY,
        404: {E.CONVERSATION_NOT_FOUND, E.MESSAGE_NOT_FOUND},
        409: {E.GENERATION_IN_PROGRESS},
        **_STREAM_503,
    },
    (f"{C}/messages/{{message_id}}/regenerate", "post"): {
        200: None,
        **_USER,
        429: {E.RATE_LIMIT_EXCEEDED, E.QUOTA_EXCEEDED, E.TOO_MANY_GENERATIONS},
        **_422,
        404: {E.CONVERSATION_NOT_FOUND, E.MESSAGE_NOT_FOUND},
        409: {E.GENERATION_IN_PROGRESS},
    },
    (f"{C}/branch", "put"): {
        200: None,
        **_USER,
        **_BODY,
        404: {E.CONVERSATION_NOT_FOUND, E.MESSAGE_NOT_FOUND},
        409: {E.GENERATION_IN_PROGRESS},
    },
    (f"{CHAT}/conversations", "get"): {200: None, **_USER, **_422},
    (f"{C}/messages", "get"): {200: None, **_USER, **_422, **_404},
    (f"{C}/stream", "get"): {200: None, 204: None, **_USER, **_422, **_404, **_STREAM_503},
    (f"{C}/stop", "post"): {200: None, 202: None, 204: None, **_USER, **_BODY, **_404},
    (C, "patch"): {200: None, **_USER, **_BODY, **_404},
    (C, "delete"): {204: None, **_USER, **_422, **_404},
    (f"{CHAT}/search", "get"): {200: None, **_USER, **_422},
    (f"{C}/export", "get"): {200: None, **_USER, **_422, **_404},
    (f"{CHAT}/models", "get"): {200: None, **_USER},
    (f"{AUTH}/me/usage", "get"): {200: None, **_USER, **_422},
    ("/health", "get"): {200: None, **_500},
    ("/ready", "get"): {200: None, 503: None, **_500},
    ("/metrics", "get"): {200: None, **_500},
}
STREAMS = {(f"{CHAT}/message", "post"), (f"{C}/stream", "get")}


@pytest.fixture(scope="module")
def app_() -> Any:
    return create_app(Settings(_env_file=None, **TEST_SETTINGS))


@pytest.fixture(scope="module")
def spec(app_: Any) -> dict[str, Any]:
    return app_.openapi()


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p, m): op for p, methods in spec["paths"].items() for m, op in methods.items()}


def test_openapi_statuses_and_error_codes_are_exact_per_route(spec):
    operations = _operations(spec)
    assert set(operations) == set(EXPECTED), "every route, and only those, has a row above"
    for key, expected in EXPECTED.items():
        responses = operations[key]["responses"]
        assert set(responses) == {str(s) for s in expected}, key
        for status, codes in expected.items():
            response = responses[str(status)]
            if codes is None:
                continue
            schema = response["content"]["application/json"]["schema"]
            assert set(schema["required"]) >= {"detail", "code"}
            assert set(schema["properties"]["code"]["enum"]) == {c.value for c in codes}, (
                key,
                status,
            )
            examples = response["content"]["application/json"]["examples"]
            assert {v["value"]["code"] for v in examples.values()} == {c.value for c in codes}
            if status == 422:
                assert "errors" in schema["properties"]


def test_operation_ids_are_tag_and_name_and_unique(app_, spec):
    seen = set()
    for route in app_.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods:
            op = spec["paths"][route.path_format][method.lower()]
            assert op["operationId"] == f"{route.tags[0]}-{route.name}"
            assert re.fullmatch(r"[a-z]+-[a-z_]+", op["operationId"]), op["operationId"]
            seen.add(op["operationId"])
    assert {"auth-register", "chat-send_message", "operations-metrics"} <= seen
    titles = repr(spec["components"]["schemas"])
    assert "_api_v1_" not in titles and "Get" not in re.findall(r"'title': '(\w+)'", titles)


def test_headers_are_declared(spec):
    headers = spec["components"]["headers"]
    assert headers["X-Request-ID"]["required"] and headers["Retry-After"]["required"]
    for (path, method), op in _operations(spec).items():
        limited = "429" in op["responses"]
        for status, response in op["responses"].items():
            names = set(response.get("headers", {}))
            assert "X-Request-ID" in names, (path, method, status)
            rate = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
            assert (rate <= names) == limited, (path, method, status)
            if status == "429":
                assert "Retry-After" in names
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            if status == "503" and "code" in schema.get("properties", {}):
                # DATABASE_UNAVAILABLE and SERVER_BUSY carry Retry-After; STREAM_UNAVAILABLE
                # does not.
                codes = set(schema["properties"]["code"]["enum"])
                retry = codes <= {"DATABASE_UNAVAILABLE", "SERVER_BUSY"}
                assert ("Retry-After" in names) == retry, (path, method)


def test_streams_are_event_streams_with_each_events_schema(spec):
    schemas = spec["components"]["schemas"]
    for key in STREAMS:
        content = _operations(spec)[key]["responses"]["200"]["content"]
        assert set(content) == {"text/event-stream"}
        # OpenAPI 3.1: the schema of one event (or the stream's text, for generated clients).
        one_of = content["text/event-stream"]["schema"]["oneOf"]
        assert one_of[0]["type"] == "string"
        events = {i["$ref"].rsplit("/", 1)[1] for i in one_of[1:]}
        assert events == {
            f"{e}Event" for e in ("Conversation", "Token", "Done", "Error", "Snapshot")
        }
    token = schemas["TokenEvent"]["properties"]
    assert token["event"]["const"] == "token"
    assert token["data"]["contentSchema"]["$ref"].endswith("/TokenEventData")
    assert set(schemas["TokenEventData"]["required"]) == {"content", "index"}
    assert set(schemas["ErrorEventData"]["properties"]["code"]["enum"]) == {
        "AI_SERVICE_UNAVAILABLE",
        "GENERATION_TIME_LIMIT",
        "GENERATION_LOST",
        "SERVER_SHUTTING_DOWN",
        "DATABASE_UNAVAILABLE",
    }
    assert schemas["SnapshotEvent"]["properties"]["data"]["contentSchema"]["$ref"].endswith(
        "/MessageResponse"
    )


def test_metrics_is_text_only_and_post_last_event_id_says_no_after(spec):
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain"}
    params = spec["paths"][f"{CHAT}/message"]["post"]["parameters"]
    last_event_id = next(p for p in params if p["name"] == "Last-Event-ID")
    assert "`after`" not in last_event_id["description"]


def test_document_is_valid_openapi(spec):
    from openapi_spec_validator import validate

    validate(spec)


@pytest.fixture(scope="module")
def generated(spec: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A client generated by openapi-python-client, which must raise no warning."""
    import json

    work = tmp_path_factory.mktemp("generated")
    (work / "openapi.json").write_text(json.dumps(spec))
    (work / "config.yaml").write_text("post_hooks: []\npackage_name_override: alice_generated\n")
    result = subprocess.run(
        [
            *(str(Path(sys.executable).with_name("openapi-python-client")),),
            "generate",
            "--path",
            "openapi.json",
            "--config",
            "config.yaml",
            "--meta",
            "none",
            "--output-path",
            "alice_generated",
            "--fail-on-warning",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output
    sys.path.insert(0, str(work))
    try:
        yield importlib.import_module("alice_generated")
    finally:
        sys.path.remove(str(work))
        for name in [m for m in sys.modules if m.startswith("alice_generated")]:
            del sys.modules[name]


def test_generated_client_has_clean_names(generated):
    api = importlib.import_module("alice_generated.api.chat.chat_send_message")
    assert callable(api.asyncio_detailed)
    models = importlib.import_module("alice_generated.models")
    assert hasattr(models, "TokenEventData") and hasattr(models, "MessageResponse")
    assert not [n for n in dir(models) if "ApiV1" in n or "HealthGet" in n]


async def test_generated_client_talks_to_the_server(generated, app, client):
    """The generated client against the app: a stream's 200 is its text (not parsed as JSON),
    an error is its typed body with `code` as an enum, /metrics is text."""
    from tests.conftest import client_for

    Client = generated.AuthenticatedClient
    register = importlib.import_module("alice_generated.api.auth.auth_register")
    send = importlib.import_module("alice_generated.api.chat.chat_send_message")
    me = importlib.import_module("alice_generated.api.auth.auth_me")
    metrics = importlib.import_module("alice_generated.api.operations.operations_metrics")
    models = importlib.import_module("alice_generated.models")

    anon = generated.Client(base_url="http://alice.test", raise_on_unexpected_status=True)
    anon.set_async_httpx_client(client_for(app))
    body = models.UserCreate(email="gen@example.com", password="SecurePass123")
    tokens = await register.asyncio(client=anon, body=body)
    assert isinstance(tokens, models.TokenResponse)
    again = await register.asyncio(client=anon, body=body)
    assert again.code.value == "EMAIL_ALREADY_EXISTS"

    authed = Client(
        base_url="http://alice.test", token=tokens.access_token, raise_on_unexpected_status=True
    )
    authed.set_async_httpx_client(client_for(app))
    httpx_client = authed.get_async_httpx_client()
    httpx_client.headers["Authorization"] = f"Bearer {tokens.access_token}"
    user = await me.asyncio(client=authed)
    assert isinstance(user, models.UserResponse) and user.email == "gen@example.com"
    stream = await send.asyncio(client=authed, body=models.MessageCreate(content="Hello"))
    assert isinstance(stream, str) and "event: done" in stream
    missing = await send.asyncio(
        client=authed,
        body=models.MessageCreate(content="Hello", conversation_id=uuid.UUID(int=1)),
    )
    assert missing.code.value == "CONVERSATION_NOT_FOUND"
    text = await metrics.asyncio(client=anon)
    assert isinstance(text, str) and "alice_http_requests_total" in text
