"""An async Python client for the ALICE API, on httpx, typed with the server's own schemas.

```python
async with AliceClient("http://127.0.0.1:8000") as alice:
    await alice.login("ada@example.com", "SecurePass123")
    async for event in alice.send("Hello ALICE!"):
        if isinstance(event.data, TokenEventData):
            print(event.data.content, end="")
```

- Tokens: `register`/`login` keep the pair; an access token near its end, or refused with
  `INVALID_TOKEN`, is refreshed once (rotation) and the request sent again.
- `send()` yields the reply's events and resumes by itself when the connection drops: each
  message gets an `Idempotency-Key`, so a retry before the first event never sends it twice;
  after the first event it re-attaches with `Last-Event-ID` (GET `…/stream`), so no event is
  lost or repeated. It ends after the terminal event (`done`, `error` or `snapshot`).
- Lists are async iterators over the keyset pages.
- Every error code of the API is an exception class of its own (`ERRORS`), all `ApiError`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from httpx_sse import EventSource, ServerSentEvent
from pydantic import BaseModel

from alice.core.errors import ErrorCode
from alice.schemas.auth import TokenResponse, UserResponse
from alice.schemas.chat import (
    ConversationPage,
    ConversationResponse,
    MessagePage,
    MessageResponse,
)
from alice.schemas.events import (
    EVENT_DATA,
    TERMINAL_EVENTS,
    ConversationEventData,
    DoneEventData,
    ErrorEventData,
    TokenEventData,
)

__all__ = [
    "ERRORS",
    "AliceClient",
    "ApiError",
    "ConversationEventData",
    "DoneEventData",
    "ErrorEventData",
    "Event",
    "StreamInterruptedError",
    "TokenEventData",
]

API = "/api/v1"
T = TypeVar("T", bound=BaseModel)

# --- errors ------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer of the API: `{"detail", "code"}` (SPEC section 3)."""

    code: str = ""

    def __init__(
        self,
        status_code: int,
        detail: str,
        code: str,
        errors: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.code = code
        self.errors = errors or []
        self.headers = dict(headers or {})

    @property
    def retry_after(self) -> int | None:
        value = self.headers.get("retry-after")
        return int(value) if value and value.isdigit() else None

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")


class StreamInterruptedError(Exception):
    """A reply's stream could not be resumed within the client's retries."""


def _error_class(code: str) -> type[ApiError]:
    name = "".join(part.capitalize() for part in code.split("_"))
    name = name if name.endswith("Error") else f"{name}Error"
    return type(name, (ApiError,), {"code": code, "__module__": __name__})


# One class per error code, from the server's own registry (and every code SPEC section 3
# names): `except ERRORS["EMAIL_ALREADY_EXISTS"]`, or by name,
# `except alice.client.EmailAlreadyExistsError`.
_CODES = list(
    dict.fromkeys(
        [c.value for c in ErrorCode]
        + "INVALID_PASSWORD SESSION_NOT_FOUND MESSAGE_NOT_FOUND QUOTA_EXCEEDED "
        "TOO_MANY_GENERATIONS MAIL_UNAVAILABLE".split()
    )
)
ERRORS: dict[str, type[ApiError]] = {code: _error_class(code) for code in _CODES}
globals().update({cls.__name__: cls for cls in ERRORS.values()})
__all__ += [cls.__name__ for cls in ERRORS.values()]


def error_from(response: httpx.Response) -> ApiError:
    """The exception for an error response (its class named by its `code`)."""
    try:
        body = response.json()
        detail, code = str(body["detail"]), str(body["code"])
        errors = body.get("errors")
    except (ValueError, KeyError, TypeError):
        detail, code, errors = response.text[:200], "", None
    cls = ERRORS.get(code, ApiError)
    return cls(response.status_code, detail, code, errors, response.headers)


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event(Generic[T]):
    """One event of a reply: its name, its `id` (`<message_id>:<seq>`) and its typed data:
    ConversationEventData, TokenEventData, DoneEventData, ErrorEventData, or MessageResponse
    for `snapshot`."""

    event: str
    id: str
    data: T

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


def _event(sse: ServerSentEvent) -> Event[Any] | None:
    model = EVENT_DATA.get(sse.event)
    if model is None:
        return None  # an event this client does not know: skipped, as SSE says
    return Event(sse.event, sse.id, model.model_validate_json(sse.data))


# --- the client --------------------------------------------------------------------------------


class AliceClient:
    """The API of one ALICE server, as one user (after `register` or `login`)."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        retry_delay: float = 1.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            transport=transport,
            timeout=httpx.Timeout(timeout, read=None),  # a stream may be quiet between events
            headers=dict(headers or {}),
        )
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.access_expires_at = 0.0
        self._refresh_lock = asyncio.Lock()

    async def __aenter__(self) -> AliceClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- accounts ----------------------------------------------------------------------------

    async def register(
        self, email: str, password: str, display_name: str | None = None
    ) -> TokenResponse:
        """Create an account and log in as it."""
        body: dict[str, Any] = {"email": email, "password": password}
        if display_name is not None:
            body["display_name"] = display_name
        return self._keep(await self._call("POST", "/auth/register", json=body, authed=False))

    async def login(self, email: str, password: str) -> TokenResponse:
        body = {"email": email, "password": password}
        return self._keep(await self._call("POST", "/auth/login", json=body, authed=False))

    async def refresh(self) -> TokenResponse:
        """Rotate the refresh token for a new pair."""
        body = {"refresh_token": self.refresh_token}
        return self._keep(await self._call("POST", "/auth/refresh", json=body, authed=False))

    async def logout(self) -> None:
        """End every session of the user; this client forgets its tokens."""
        await self._call("POST", "/auth/logout")
        self.access_token = self.refresh_token = None

    async def me(self) -> UserResponse:
        return UserResponse.model_validate_json((await self._call("GET", "/auth/me")).content)

    def _keep(self, response: httpx.Response) -> TokenResponse:
        tokens = TokenResponse.model_validate_json(response.content)
        self.access_token = tokens.access_token
        self.refresh_token = tokens.refresh_token
        self.access_expires_at = time.monotonic() + tokens.expires_in
        return tokens

    # --- conversations -----------------------------------------------------------------------

    async def conversations(self, limit: int = 20) -> AsyncIterator[ConversationResponse]:
        """Every conversation, most recently updated first, `limit` per page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
            response = await self._call("GET", "/chat/conversations", params=params)
            page = ConversationPage.model_validate_json(response.content)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def messages(
        self, conversation_id: uuid.UUID | str, limit: int = 50
    ) -> AsyncIterator[MessageResponse]:
        """A conversation's messages, oldest first, `limit` per page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
            path = f"/chat/conversations/{conversation_id}/messages"
            page = MessagePage.model_validate_json(
                (await self._call("GET", path, params=params)).content
            )
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def rename(self, conversation_id: uuid.UUID | str, title: str) -> ConversationResponse:
        path = f"/chat/conversations/{conversation_id}"
        response = await self._call("PATCH", path, json={"title": title})
        return ConversationResponse.model_validate_json(response.content)

    async def delete_conversation(self, conversation_id: uuid.UUID | str) -> None:
        await self._call("DELETE", f"/chat/conversations/{conversation_id}")

    async def stop(
        self, conversation_id: uuid.UUID | str, last_index: int | None = None
    ) -> MessageResponse | None:
        """Stop the conversation's running reply, keeping the text up to `last_index` (the
        last token shown; default all). None when nothing was running."""
        body = {} if last_index is None else {"last_index": last_index}
        path = f"/chat/conversations/{conversation_id}/stop"
        response = await self._call("POST", path, json=body)
        if response.status_code == 204:
            return None
        return MessageResponse.model_validate_json(response.content)

    # --- the reply stream --------------------------------------------------------------------

    async def send(
        self,
        content: str,
        conversation_id: uuid.UUID | str | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> AsyncIterator[Event[Any]]:
        """Send a message and yield its reply's events to the terminal one, resuming after a
        dropped connection. `idempotency_key` (default: a new one) makes a retried send the
        same message; `fields` are further body fields the server takes."""
        body: dict[str, Any] = {"content": content, **fields}
        if conversation_id is not None:
            body["conversation_id"] = str(conversation_id)
        key = idempotency_key or uuid.uuid4().hex
        state = _Resume()
        async for event in self._follow(state, "POST", "/chat/message", body, key):
            yield event

    async def reattach(
        self, conversation_id: uuid.UUID | str, last_event_id: str | None = None
    ) -> AsyncIterator[Event[Any]]:
        """The events of the conversation's newest reply (or of the one `last_event_id`
        names, after it) to the terminal one; nothing when nothing follows."""
        state = _Resume(conversation_id=str(conversation_id), last_event_id=last_event_id)
        async for event in self._follow(state, "GET", "", None, None):
            yield event

    async def _follow(
        self,
        state: _Resume,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        key: str | None,
    ) -> AsyncIterator[Event[Any]]:
        failures = 0
        while True:
            if state.conversation_id is not None:
                # Once the conversation is known, every resume is a re-attach by GET.
                method, path, body = (
                    "GET",
                    f"/chat/conversations/{state.conversation_id}/stream",
                    None,
                )
            headers = {"Idempotency-Key": key} if key and method == "POST" else {}
            if state.last_event_id:
                headers["Last-Event-ID"] = state.last_event_id
            progressed = False
            try:
                async with self._stream(method, path, body, headers) as response:
                    if response.status_code == 204:
                        return  # nothing follows
                    if response.status_code != 200:
                        await response.aread()
                        error = error_from(response)
                        if not _retryable(error) or failures >= self.max_retries:
                            raise error
                        failures += 1
                        await asyncio.sleep(error.retry_after or state.delay(self.retry_delay))
                        continue
                    async for sse in EventSource(response).aiter_sse():
                        if sse.retry is not None:
                            state.retry_ms = sse.retry
                        event = _event(sse)
                        if event is None:
                            continue
                        state.last_event_id = sse.id
                        if isinstance(event.data, ConversationEventData):
                            state.conversation_id = str(event.data.conversation_id)
                        progressed = True
                        yield event
                        if event.terminal:
                            return
            except httpx.TransportError:
                pass  # the connection dropped: resume below
            # The stream ended without its terminal event (dropped, or closed by the server
            # at its connection cap or shutdown): resume after the last event.
            failures = 0 if progressed else failures + 1
            if failures > self.max_retries:
                raise StreamInterruptedError(
                    f"the reply's stream could not be resumed after {self.max_retries} retries"
                )
            await asyncio.sleep(0 if progressed else state.delay(self.retry_delay))

    def _stream(
        self, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]
    ) -> Any:
        return _AuthedStream(self, method, path, body, headers)

    # --- requests ----------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, *, authed: bool = True, **kwargs: Any
    ) -> httpx.Response:
        for attempt in (0, 1):
            headers = await self._auth_headers() if authed else {}
            sent_with = self.access_token
            response = await self._http.request(method, API + path, headers=headers, **kwargs)
            if response.status_code < 400:
                return response
            if authed and attempt == 0 and await self._refreshed_after(response, sent_with):
                continue
            raise error_from(response)
        raise AssertionError("unreachable")

    async def _auth_headers(self) -> dict[str, str]:
        if self.refresh_token and time.monotonic() > self.access_expires_at - 30:
            await self._refresh_once(self.access_token)
        return {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}

    async def _refreshed_after(self, response: httpx.Response, sent_with: str | None) -> bool:
        """After a 401 INVALID_TOKEN: refresh (once for every request that saw it) and say
        whether to send the request again."""
        if response.status_code != 401 or not self.refresh_token:
            return False
        try:
            code = response.json().get("code")
        except ValueError:
            return False
        if code != "INVALID_TOKEN":
            return False
        return await self._refresh_once(sent_with)

    async def _refresh_once(self, sent_with: str | None) -> bool:
        async with self._refresh_lock:
            if self.access_token != sent_with:
                return True  # another request refreshed meanwhile
            await self.refresh()
            return True


@dataclass
class _Resume:
    """Where a reply's stream stands: the cursor to resume from."""

    conversation_id: str | None = None
    last_event_id: str | None = None
    retry_ms: int | None = None

    def delay(self, default: float) -> float:
        return self.retry_ms / 1000 if self.retry_ms is not None else default


def _retryable(error: ApiError) -> bool:
    # A reply's events out of this process's reach, or the database gone for a moment.
    return error.code in {"STREAM_UNAVAILABLE", "DATABASE_UNAVAILABLE", "INTERNAL_ERROR"}


class _AuthedStream:
    """`client.stream(...)` with the bearer token, refreshed once on `INVALID_TOKEN`."""

    def __init__(
        self,
        client: AliceClient,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
    ) -> None:
        self._client = client
        self._args = (method, API + path)
        self._body = body
        self._headers = headers
        self._cm: Any = None

    async def __aenter__(self) -> httpx.Response:
        client = self._client
        for attempt in (0, 1):
            sent_with = client.access_token
            headers = {**self._headers, **await client._auth_headers()}
            kwargs: dict[str, Any] = {"headers": headers}
            if self._body is not None:
                kwargs["content"] = json.dumps(self._body)
                headers["Content-Type"] = "application/json"
            self._cm = client._http.stream(*self._args, **kwargs)
            response: httpx.Response = await self._cm.__aenter__()
            if response.status_code == 401 and attempt == 0:
                await response.aread()
                if await client._refreshed_after(response, sent_with):
                    await self._cm.__aexit__(None, None, None)
                    continue
            return response
        raise AssertionError("unreachable")

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(*exc)
