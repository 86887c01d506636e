"""Hostile input: a schema-driven fuzzer, values built to break SQL, sizes at and over the
limits, Unicode edge cases, and the time a login takes for an unknown email."""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
import unicodedata
import uuid
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from alice.core.middleware import MAX_BODY_BYTES, MAX_HEADER_BYTES
from alice.main import create_app
from tests.chatkit import CHAT, send
from tests.conftest import PASSWORD, client_for, serve

AUTH = "/api/v1/auth"


@pytest.fixture
async def app(settings):
    """The app with the limits off: these tests send far more than a minute's allowance."""
    application = create_app(settings.model_copy(update={"rate_limit_enabled": False}))
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=60):
        yield application


# --- schemathesis ------------------------------------------------------------------------------

FUZZ_EXAMPLES = 40


def _register_via(client: Any, base: str, email: str) -> str:
    resp = client.post(f"{base}{AUTH}/register", json={"email": email, "password": PASSWORD})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["access_token"])


def fuzz_operation(operation: Any, headers: dict[str, str], excluded: list[Any]) -> None:
    """Positive and negative cases of one operation, each sent and checked."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given
    from hypothesis import settings as hypothesis_settings

    strategy = operation.as_strategy(schemathesis.GenerationMode.POSITIVE) | operation.as_strategy(
        schemathesis.GenerationMode.NEGATIVE
    )

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    fuzz()


def test_schemathesis_finds_no_5xx_and_no_response_off_its_schema(settings):
    """Every operation of /openapi.json, positive and negative data, with a valid bearer token
    and the limits off: no 5xx, and status, content type, headers and body as documented."""
    import schemathesis
    import schemathesis.checks as checks
    from schemathesis.python import asgi

    app = create_app(settings.model_copy(update={"rate_limit_enabled": False}))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
    # The token goes in by hand; unknown query parameters are ignored by design, not refused.
    schema.config.generation.update(allow_extra_parameters=False, with_security_parameters=False)
    # A generated body over 256 KiB, or headers over 32 KiB, are rightly refused with 413 or
    # 431 (code PAYLOAD_TOO_LARGE): rejections too.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413", "431"]
    try:
        with asgi.get_client(app) as client:
            token = _register_via(client, "http://testserver", "fuzz@example.com")
            resp = client.post(
                f"http://testserver{CHAT}/message",
                json={"content": "something to list"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert resp.status_code == 200
        headers = {"Authorization": f"Bearer {token}"}
        failures: list[str] = []
        started = time.monotonic()
        for result in schema.get_all_operations():
            operation = result.ok()
            method = operation.method.upper()
            if operation.path == f"{AUTH}/logout":
                continue  # it would end the token's session for every operation after it
            excluded = [checks.positive_data_acceptance]  # rules beyond JSON Schema: see below
            try:
                fuzz_operation(operation, headers, excluded)
            except BaseException as exc:  # noqa: BLE001 - schemathesis raises a FailureGroup
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{method} {operation.path}:\n{exc}")
        assert not failures, "\n\n".join(failures)
        assert time.monotonic() - started < 60
    finally:
        asgi.shutdown_lifespans()
    # positive_data_acceptance is left out: the contract's rules (a password with an upper-case
    # letter and a digit, an email that email-validator accepts, content not all white space)
    # go beyond what JSON Schema says, so schema-valid data is rightly refused with a 422,
    # which the other checks still hold to its documented shape.


# --- values built to break SQL ----------------------------------------------------------------


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


INJECTIONS = [
    "' OR 1=1 --",
    "'; DROP TABLE users; --",
    '" OR ""="',
    "1 OR 1=1",
    "%' OR '%'='",
    "\\'; SELECT pg_sleep(5); --",
    "0x27",
    "99999999999999999999999999999999",
    "-1",
    "１０",  # full-width digits
    "ä' UNION SELECT * FROM users --",
    "🙂",
]


def unb64(cursor: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def hostile_cursors(real: str) -> list[str]:
    """Cursors built to break the query, most of them from a real one (`[version, kind,
    microseconds, id]`) with one field replaced, so that each gets past the others."""
    version, kind, micros, item_id = unb64(real)

    def like(**change: Any) -> str:
        fields = {"version": version, "kind": kind, "micros": micros, "id": item_id, **change}
        return b64(list(fields.values()))

    return [
        *INJECTIONS,
        "=" * 8,
        "not base64 !!",
        real + "' OR 1=1 --",
        real[:-2],
        b64(b"\x00\x01\x02\xff"),
        b64("not a list"),
        b64(b"[" * 300 + b"]" * 300),  # deep nesting, within the 512-character limit
        like(micros="' OR 1=1 --"),
        like(micros=10**30),
        like(micros=-(10**30)),
        like(micros=2**62),
        like(micros=1.5),
        like(micros=None),
        like(micros=[micros]),
        like(id="' OR 1=1 --"),
        like(id=item_id[:-1] + "'"),
        like(id=12345),
        like(id=None),
        like(id={"$ne": None}),
        like(kind="m" if kind != "m" else "c"),  # a cursor of the other list
        like(kind="' OR 1=1 --"),
        like(version=version + 1),
        like(version="1' --"),
        b64([version, kind, micros]),
        b64([version, kind, micros, item_id, "extra"]),
        b64({"version": version, "kind": kind, "at": micros, "id": item_id}),
        "A" * 513,  # over the documented length
    ]


async def test_hostile_cursors_are_422_never_500(client, user):
    for _ in range(3):
        await make_conversation(client, user.access_token)
    first = await client.get(f"{CHAT}/conversations", params={"limit": 1}, headers=user.headers)
    real = first.json()["next_cursor"]
    second = await client.get(
        f"{CHAT}/conversations", params={"limit": 1, "cursor": real}, headers=user.headers
    )
    assert second.status_code == 200 and len(second.json()["items"]) == 1
    for cursor in hostile_cursors(real):
        resp = await client.get(
            f"{CHAT}/conversations", params={"cursor": cursor}, headers=user.headers
        )
        assert resp.status_code == 422, (cursor, resp.status_code, resp.text)
        assert resp.json()["code"] == "VALIDATION_ERROR"
    # An empty cursor is no cursor: the first page.
    resp = await client.get(f"{CHAT}/conversations", params={"cursor": ""}, headers=user.headers)
    assert resp.status_code == 200 and len(resp.json()["items"]) == 3
    # Well-formed cursors with keys at the ends of the range are real pages, not errors.
    version, kind, _micros, item_id = unb64(real)
    for micros, expected in ((0, 0), (-(2**55), 0), (2**57, 3)):
        edge = b64([version, kind, micros, item_id])
        resp = await client.get(
            f"{CHAT}/conversations", params={"cursor": edge}, headers=user.headers
        )
        assert resp.status_code == 200, (micros, resp.text)
        assert len(resp.json()["items"]) == expected
    # The messages' cursors hold to the same rules.
    cid = second.json()["items"][0]["id"]
    page = await client.get(
        f"{CHAT}/conversations/{cid}/messages", params={"limit": 1}, headers=user.headers
    )
    real = page.json()["next_cursor"]
    for cursor in hostile_cursors(real):
        resp = await client.get(
            f"{CHAT}/conversations/{cid}/messages",
            params={"cursor": cursor},
            headers=user.headers,
        )
        assert resp.status_code == 422, (cursor, resp.status_code, resp.text)


async def make_conversation(client: httpx.AsyncClient, token: str, text: str = "hello") -> str:
    stream = await send(client, token, text)
    assert stream.terminal.event == "done"
    return str(stream.conversation_id)


async def test_hostile_ids_queries_and_event_ids_are_4xx_never_500(client, user, make_user):
    cid = await make_conversation(client, user.access_token)
    other = await make_user()
    other_cid = await make_conversation(client, other.access_token)
    h = user.headers
    for value in [*INJECTIONS, "..%2F..%2Fetc%2Fpasswd", "%00", "x" * 5000]:
        for method, path in (
            ("GET", f"{CHAT}/conversations/{{}}/messages"),
            ("GET", f"{CHAT}/conversations/{{}}/stream"),
            ("POST", f"{CHAT}/conversations/{{}}/stop"),
            ("PATCH", f"{CHAT}/conversations/{{}}"),
            ("DELETE", f"{CHAT}/conversations/{{}}"),
        ):
            kwargs: dict[str, Any] = {"headers": h}
            if method == "PATCH":
                kwargs["json"] = {"title": "x"}
            resp = await client.request(method, path.format(value), **kwargs)
            assert resp.status_code in (404, 422), (method, path, value, resp.text)
        for limit in (value, "0", "101", "-5", "1e2", "NaN", "10; DROP TABLE users"):
            resp = await client.get(f"{CHAT}/conversations", params={"limit": limit}, headers=h)
            assert resp.status_code in (200, 422), (limit, resp.text)
            if resp.status_code == 200:  # "１０" is ten to Python's int()
                assert len(resp.json()["items"]) <= 100
        resp = await client.get(
            f"{CHAT}/conversations/{cid}/stream", params={"after": value[:64]}, headers=h
        )
        assert resp.status_code == 422, (value, resp.text)
        resp = await client.get(
            f"{CHAT}/conversations/{cid}/stream",
            headers={**h, "Last-Event-ID": f"{value[:40]}:1".encode()},
        )
        assert resp.status_code == 422, (value, resp.text)
        resp = await client.post(
            f"{CHAT}/message", json={"content": "hi", "conversation_id": value}, headers=h
        )
        # (32 digits are a well-formed UUID: a conversation that does not exist.)
        assert resp.status_code in (404, 422), (value, resp.text)
    # Well-formed ids that are not the caller's: 404, exactly as a missing one.
    for unknown in (other_cid, str(uuid.uuid4()), "00000000-0000-0000-0000-000000000000"):
        resp = await client.get(f"{CHAT}/conversations/{unknown}/messages", headers=h)
        assert resp.status_code == 404 and resp.json()["code"] == "CONVERSATION_NOT_FOUND"
    for seq in ("99999999999999999999", "-1", "1.5", ""):
        resp = await client.get(
            f"{CHAT}/conversations/{cid}/stream",
            params={"after": f"{uuid.uuid4()}:{seq}"},
            headers=h,
        )
        assert resp.status_code == 422, (seq, resp.text)
    resp = await client.post(
        f"{CHAT}/conversations/{cid}/stop", json={"last_index": 10**40}, headers=h
    )
    assert resp.status_code in (204, 422)
    # Nothing was dropped or leaked: both users still see exactly their own.
    mine = await client.get(f"{CHAT}/conversations", headers=h)
    assert [c["id"] for c in mine.json()["items"]] == [cid]
    theirs = await client.get(f"{CHAT}/conversations", headers=other.headers)
    assert [c["id"] for c in theirs.json()["items"]] == [other_cid]


async def test_sql_in_text_is_stored_verbatim_and_logins_with_sql_fail(client, user):
    h = user.headers
    text = "Robert'); DROP TABLE messages; -- \" ' \\ %_ $1 ${x}"
    cid = await make_conversation(client, user.access_token, text)
    title = "'; UPDATE users SET is_active = false; --"
    resp = await client.patch(f"{CHAT}/conversations/{cid}", json={"title": title}, headers=h)
    assert resp.status_code == 200 and resp.json()["title"] == title
    page = (await client.get(f"{CHAT}/conversations/{cid}/messages", headers=h)).json()
    assert page["items"][0]["content"] == text
    for email in ("' OR '1'='1", f"{user.email}' --", "' OR 1=1 --@example.com", "%"):
        for password in ("' OR '1'='1", "x' OR 'x'='x", PASSWORD + "' --"):
            resp = await client.post(f"{AUTH}/login", json={"email": email, "password": password})
            assert resp.status_code == 401 and resp.json()["code"] == "AUTHENTICATION_FAILED"
    assert (await client.get(f"{AUTH}/me", headers=h)).json()["is_active"] is True


# --- sizes at and over the limits, through a real socket -----------------------------------------


async def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """One request on a fresh connection; the whole answer (the server closes or we time out)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
    except ConnectionError:
        pass
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
    except (ConnectionError, TimeoutError):
        pass
    writer.close()
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def json_of(answer: bytes) -> dict[str, Any]:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def login_body(size: int) -> bytes:
    """A login body of exactly `size` bytes (its password is far over 128 characters)."""
    start, end = b'{"email": "a@example.com", "password": "', b'"}'
    return start + b"p" * (size - len(start) - len(end)) + end


async def test_body_of_exactly_256_kib_is_read_and_one_byte_more_is_413(settings):
    async with serve(settings) as (_app, url):
        port = int(url.rsplit(":", 1)[1])
        for size, expected in ((MAX_BODY_BYTES, 422), (MAX_BODY_BYTES + 1, 413)):
            body = login_body(size)
            assert len(body) == size
            head = (
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size
            )
            answer = await raw_request(port, head, body)
            assert status_of(answer) == expected, answer[:200]
            # The same body without Content-Length, counted as it arrives (chunked).
            chunked = b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 8192]), body[i : i + 8192])
                for i in range(0, len(body), 8192)
            )
            head = (
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            answer = await raw_request(port, head, chunked + b"0\r\n\r\n")
            assert status_of(answer) == expected, answer[:200]
            assert json_of(answer)["code"] == (
                "PAYLOAD_TOO_LARGE" if expected == 413 else "VALIDATION_ERROR"
            )
        # A Content-Length that lies (claims less than is sent) or is absurd.
        head = b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"
        assert status_of(await raw_request(port, head)) == 413


def head_with_padding(pad: int, target: bytes = b"/health") -> bytes:
    """A GET whose head holds `len(target) + 1 + 1 + 5 + pad` bytes as the limit counts them
    (target, `host: x`, `x-pad: …`)."""
    return b"GET %s HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % (target, b"a" * pad)


async def test_headers_at_the_limit_pass_and_over_it_are_431_through_alice_serve(tmp_path):
    from tests.test_logs import alice_serve  # a real `alice serve`: its own HTTP protocol

    with alice_serve(tmp_path) as (url, _log):
        port = int(url.rsplit(":", 1)[1])
        at_limit = MAX_HEADER_BYTES - len(b"/health") - len(b"host") - 1 - len(b"x-pad")
        answer = await raw_request(port, head_with_padding(at_limit))
        assert status_of(answer) == 200, answer[:200]
        answer = await raw_request(port, head_with_padding(at_limit + 1))
        assert status_of(answer) == 431, answer[:200]
        assert json_of(answer) == {
            "detail": "The request headers are too large.",
            "code": "PAYLOAD_TOO_LARGE",
        }
        # Far over: refused while it arrives, before the head is held whole, and closed.
        for huge in (
            head_with_padding(16 * 1024 * 1024),
            b"GET /health?" + b"q" * (4 * 1024 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(100_000))
            + b"\r\n",
        ):
            started = time.monotonic()
            answer = await raw_request(port, huge)
            assert status_of(answer) == 431, answer[:200]
            assert time.monotonic() - started < 5
        # And the server goes on serving.
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200


# --- Unicode ------------------------------------------------------------------------------------


async def register(client: httpx.AsyncClient, email: str, password: str = PASSWORD, **extra):
    return await client.post(
        f"{AUTH}/register", json={"email": email, "password": password, **extra}
    )


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD):
    return await client.post(f"{AUTH}/login", json={"email": email, "password": password})


NFC_EMAIL = unicodedata.normalize("NFC", "josé.müller@exämple.com")
NFD_EMAIL = unicodedata.normalize("NFD", NFC_EMAIL)


async def test_nfc_and_nfd_forms_of_an_email_are_one_account(client):
    assert NFC_EMAIL != NFD_EMAIL
    resp = await register(client, NFD_EMAIL)
    assert resp.status_code == 201
    me = await client.get(
        f"{AUTH}/me", headers={"Authorization": f"Bearer {resp.json()['access_token']}"}
    )
    assert me.json()["email"] == NFC_EMAIL  # stored in NFC (email-validator normalises)
    for form in (NFC_EMAIL, NFD_EMAIL, NFC_EMAIL.upper()):
        resp = await register(client, form)
        assert resp.status_code == 409 and resp.json()["code"] == "EMAIL_ALREADY_EXISTS", form
    assert (await login(client, NFC_EMAIL)).status_code == 200


async def test_login_with_the_nfd_form_of_the_email(client):
    assert (await register(client, NFC_EMAIL)).status_code == 201
    assert (await login(client, NFD_EMAIL)).status_code == 200


@pytest.mark.parametrize(
    "email",
    [
        "a\u200b@example.com",  # zero-width space
        "a\u200f@example.com",  # right-to-left mark
        "\u202eab@example.com",  # right-to-left override
        "a\u00a0b@example.com",  # no-break space
        "a\x00@example.com",
        "a@example.com\x00",
        " a@example.com",
    ],
)
async def test_invisible_and_control_characters_in_an_email_are_422(client, email):
    resp = await register(client, email)
    assert resp.status_code == 422 and resp.json()["code"] == "VALIDATION_ERROR"
    assert [e["field"] for e in resp.json()["errors"]] == ["body.email"]


async def test_nul_and_unpaired_surrogates_are_refused_never_500(client, user):
    async def raw_post(path: str, raw: bytes, headers: dict[str, str] | None = None):
        return await client.post(
            path, content=raw, headers={"content-type": "application/json", **(headers or {})}
        )

    # NUL: refused at registration, never stored.
    for body in (
        {"email": "nul@example.com", "password": "Secure\x00Pass123"},
        {"email": "nul@example.com", "password": PASSWORD, "display_name": "A\x00B"},
    ):
        assert (await client.post(f"{AUTH}/register", json=body)).status_code == 422
    # At login a NUL is a wrong credential or a refused value, never a 500 (PostgreSQL text
    # cannot hold NUL: the driver's refusal is a 422).
    for email, password in ((user.email + "\x00", PASSWORD), (user.email, PASSWORD + "\x00")):
        resp = await login(client, email, password)
        assert resp.status_code in (401, 422), resp.text
    # A JSON escape of an unpaired surrogate decodes to a string no encoder takes.
    for path, raw, headers in (
        (f"{AUTH}/register", b'{"email": "s@example.com", "password": "Secure\\ud800Pass1"}', None),
        (
            f"{AUTH}/register",
            b'{"email": "s2@example.com", "password": "SecurePass123", "display_name": "a\\udc00"}',
            None,
        ),
        (f"{AUTH}/register", b'{"email": "s\\ud800@example.com", "password": "SecurePass1"}', None),
        (f"{AUTH}/login", b'{"email": "s@example.com", "password": "Secure\\ud800Pass1"}', None),
        (f"{AUTH}/refresh", b'{"refresh_token": "a.\\ud800.b"}', None),
        (f"{CHAT}/message", b'{"content": "hi \\ud83d"}', user.headers),
    ):
        resp = await raw_post(path, raw, headers)
        assert resp.status_code == 422, (path, raw, resp.status_code, resp.text)
        assert resp.json()["code"] == "VALIDATION_ERROR"
    # Bytes that are not UTF-8 at all.
    resp = await raw_post(f"{AUTH}/login", b'{"email": "\xff\xfe", "password": "x"}')
    assert resp.status_code == 422 and resp.json()["code"] == "VALIDATION_ERROR"


async def test_unicode_passwords_and_display_names_round_trip(client):
    # A Hebrew name with a right-to-left mark.
    hebrew = "\u05d0\u05d3\u05d4 \u200f(\u05de\u05e0\u05d4\u05dc\u05ea)"
    emoji_zwj = "👩\u200d💻 Ada"  # zero-width joiner inside one emoji
    override = "\u202eevil.exe"  # right-to-left override: kept as sent; the client renders it
    for i, name in enumerate((hebrew, emoji_zwj, override)):
        password = "Pässwörd1Ω" + "🔑" * i
        resp = await register(client, f"u{i}@example.com", password, display_name=name)
        assert resp.status_code == 201, resp.text
        me = await client.get(
            f"{AUTH}/me", headers={"Authorization": f"Bearer {resp.json()['access_token']}"}
        )
        assert me.json()["display_name"] == name  # exactly, code point for code point
        assert (await login(client, f"u{i}@example.com", password)).status_code == 200
        # Passwords are verified exactly as received (README): another normal form is
        # another password.
        nfd = unicodedata.normalize("NFD", password)
        assert nfd != password
        assert (await login(client, f"u{i}@example.com", nfd)).status_code == 401
    # Length counts code points: 128 astral characters (with the required classes) pass.
    long_password = "A1" + "🔑" * 126
    assert (await register(client, "long@example.com", long_password)).status_code == 201
    assert (await login(client, "long@example.com", long_password)).status_code == 200
    assert (await register(client, "long2@example.com", long_password + "🔑")).status_code == 422
    # A display name that is only white space (Unicode spaces included) is refused.
    for blank in ("   ", "\u3000\u2003", "\t\n"):
        resp = await register(client, "blank@example.com", display_name=blank)
        assert resp.status_code == 422, blank


# --- login timing -------------------------------------------------------------------------------


async def test_unknown_email_and_wrong_password_take_the_same_time(make_settings, backend):
    """Medians over a few dozen logins each, interleaved, with the limits off and Argon2 costly
    enough (OWASP's minimum: 19 MiB, 2 passes) that the hash dominates as in production."""
    from tests.conftest import _create_schema, _drop_schema

    s = make_settings(
        rate_limit_enabled=False,
        argon2_time_cost=2,
        argon2_memory_kib=19456,
        argon2_parallelism=1,
    )
    if backend == "postgres":
        await _create_schema(s)
    try:
        app = create_app(s)
        async with LifespanManager(app, startup_timeout=30), client_for(app) as client:
            await app.state.services.auth.register("timing@example.com", PASSWORD, None)
            unknown, wrong = [], []

            async def timed_login(email: str) -> float:
                started = time.perf_counter()
                resp = await login(client, email, "WrongPass999")
                elapsed = time.perf_counter() - started
                assert resp.status_code == 401
                assert resp.json() == {
                    "detail": "Incorrect email or password.",
                    "code": "AUTHENTICATION_FAILED",
                }
                return elapsed

            for _ in range(3):  # warm up both paths
                await timed_login("nobody@example.com")
                await timed_login("timing@example.com")
            for i in range(36):
                pair = [(f"nobody{i}@example.com", unknown), ("timing@example.com", wrong)]
                for email, out in pair if i % 2 else pair[::-1]:
                    out.append(await timed_login(email))
        a, b = statistics.median(unknown), statistics.median(wrong)
        assert abs(a - b) / max(a, b) < 0.20, (
            f"unknown email {a * 1000:.1f} ms, wrong password {b * 1000:.1f} ms"
        )
        assert min(a, b) > 0.005, "the hash is too cheap for the comparison to mean anything"
    finally:
        if backend == "postgres":
            await _drop_schema(s)
