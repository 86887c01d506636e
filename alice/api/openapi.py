"""The OpenAPI document, precise enough to generate a client from (SPEC section 8).

A route declares little; this module derives the rest from one place each:
- `operationId` is `<tag>-<function name>` (`operation_id`, FastAPI's
  `generate_unique_id_function`), so the first tag and the function name are the contract.
- Error responses come from the error registry (`alice.core.errors`): the codes a route
  declares with `responses(*codes)` (`alice.api.errors`), plus those its dependencies declare
  in an `openapi_codes` attribute (the bearer-token user: 401/403/429/503; a per-IP limit:
  429), plus `VALIDATION_ERROR` when it takes parameters or a body, `PAYLOAD_TOO_LARGE` when it
  takes a body, and `INTERNAL_ERROR` everywhere. Each error status gets a schema whose `code`
  is the enum of exactly the codes the route answers with that status.
- Headers: `X-Request-ID` on every response; `X-RateLimit-*` on every response of a route that
  can answer `RATE_LIMIT_EXCEEDED`; `Retry-After` on the statuses whose codes carry it.
- A reply stream (`responses(..., stream=True)`) is `text/event-stream`: a string whose
  `contentSchema` is the sequence of its events, each event a schema of its own with the
  schema of its `data` (OpenAPI 3.1 has no `itemSchema`; a generated client reads the body as
  text instead of failing to parse it as JSON).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from alice.core.errors import (
    DEFAULT_DETAIL,
    RETRY_AFTER_CODES,
    STATUS,
    STREAM_ERROR_CODES,
    ErrorCode,
    error_body,
)
from alice.schemas.errors import FieldError
from alice.schemas.events import EVENT_DATA

CODES_KEY = "x-alice-codes"  # carries a route's declared codes from `responses()` to here
STREAM_KEY = "x-alice-event-stream"
_REF = "#/components/schemas/"
_HEADER_REF = "#/components/headers/"

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id: the one the client sent (when sane) or a new one; "
        "it names the request in the server's logs.",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-RateLimit-Limit": {
        "description": "Requests allowed in the route's window (absent when limits are off).",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in the window (absent when limits are off).",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Reset": {
        "description": "Unix time (seconds) when the oldest counted request leaves the window.",
        "schema": {"type": "integer"},
    },
    "Retry-After": {
        "description": "Whole seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer"},
    },
}
_RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def operation_id(route: APIRoute) -> str:
    """`<tag>-<name>`: the route's first tag and its function's name (`chat-send_message`)."""
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


def route_codes(route: APIRoute, operation: dict[str, Any]) -> set[ErrorCode]:
    """Every error code the route can answer (see the module docstring)."""
    codes: set[ErrorCode] = {ErrorCode.INTERNAL_ERROR}
    for response in route.responses.values():
        codes.update(ErrorCode(c) for c in response.get(CODES_KEY, ()))
    codes.update(_dependency_codes(route.dependant))
    if operation.get("parameters") or operation.get("requestBody"):
        codes.add(ErrorCode.VALIDATION_ERROR)
    if operation.get("requestBody"):
        codes.add(ErrorCode.PAYLOAD_TOO_LARGE)
    return codes


def _dependency_codes(dependant: Dependant) -> Iterable[ErrorCode]:
    for dep in dependant.dependencies:
        yield from getattr(dep.call, "openapi_codes", ())
        yield from _dependency_codes(dep)


def error_response(codes: list[ErrorCode]) -> dict[str, Any]:
    """The documented response of one error status: the spec's body, `code` as an enum."""
    properties: dict[str, Any] = {
        "detail": {"type": "string", "description": "Text for people."},
        "code": {"type": "string", "enum": [c.value for c in codes]},
    }
    required = ["detail", "code"]
    if ErrorCode.VALIDATION_ERROR in codes:
        properties["errors"] = {
            "type": "array",
            "items": {"$ref": f"{_REF}FieldError"},
            "description": "The fields that break their rules (VALIDATION_ERROR only).",
        }
    examples = {c.value: {"value": error_body(c)} for c in codes}
    for code in codes:
        if code is ErrorCode.VALIDATION_ERROR:
            examples[code.value]["value"]["errors"] = [
                {"field": "body.content", "message": "Field required"}
            ]
    headers = {}
    if all(c in RETRY_AFTER_CODES for c in codes):
        headers["Retry-After"] = {"$ref": f"{_HEADER_REF}Retry-After"}
    return {
        "description": " / ".join(f"`{c.value}`: {DEFAULT_DETAIL[c]}" for c in codes),
        "headers": headers,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": required,
                    "properties": properties,
                },
                "examples": examples,
            }
        },
    }


def event_stream_content() -> dict[str, Any]:
    """The `text/event-stream` content of a reply stream.

    OpenAPI 3.1 reads the `schema` of an event stream as the schema of one event (schemathesis
    checks each event against it); 3.2's `itemSchema` is not valid in 3.1, and
    openapi-python-client reads 3.1 only. So the schema is one of the events, or a string: a
    client that does not parse the events (a generated one) gets the stream as its text."""
    events = [{"$ref": f"{_REF}{_event_name(e)}"} for e in EVENT_DATA]
    return {
        "text/event-stream": {
            "schema": {
                "description": "Server-Sent Events: `conversation`, then `token`s, then `done` "
                "or `error` (or a single `snapshot` for a finished reply past its retention); "
                "each with `id: <message_id>:<seq>`, the first also with `retry: 1000`; "
                "`: ping` comment lines while open.",
                "oneOf": [{"type": "string", "description": "The stream as text."}, *events],
            }
        }
    }


def _event_name(event: str) -> str:
    return f"{event.capitalize()}Event"


def _event_schema(event: str, data: type[BaseModel]) -> dict[str, Any]:
    return {
        "title": _event_name(event),
        "type": "object",
        "description": f"The `{event}` event. {data.__doc__ or ''}".strip(),
        "required": ["id", "event", "data"],
        "properties": {
            "id": {
                "type": "string",
                "description": "`<message_id>:<seq>`, seq 1, 2, … without a gap in a reply.",
                "pattern": "^[0-9a-f-]{36}:[0-9]+$",
            },
            "event": {"type": "string", "const": event},
            "retry": {"type": "integer", "description": "On the first event of a stream."},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": f"{_REF}{data.__name__}"},
            },
        },
    }


def _components(doc: dict[str, Any]) -> None:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    models: list[type[BaseModel]] = [FieldError, *EVENT_DATA.values()]
    for model in models:
        schema = model.model_json_schema(ref_template=_REF + "{model}", mode="serialization")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas.setdefault(model.__name__, schema)
    # An `error` event carries only the codes that end a reply inside its stream.
    schemas["ErrorEventData"]["properties"]["code"] = {
        "type": "string",
        "enum": [c.value for c in STREAM_ERROR_CODES],
    }
    schemas.pop("ErrorCode", None)
    for event, data in EVENT_DATA.items():
        schemas[_event_name(event)] = _event_schema(event, data)
    doc["components"]["headers"] = HEADERS


def _prune(doc: dict[str, Any]) -> None:
    """Drop the component schemas nothing refers to any more (FastAPI's 422 models)."""
    schemas = doc["components"]["schemas"]
    while True:
        text = repr({k: v for k, v in doc.items() if k != "components"}) + repr(
            {k: v for k, v in doc["components"].items() if k != "schemas"}
        )
        text += repr(schemas)
        unused = [name for name in schemas if f"{_REF}{name}'" not in text]
        unused = [n for n in unused if n not in _KEEP]
        if not unused:
            return
        for name in unused:
            del schemas[name]


# Event schemas are documentation and client types even where no route refers to them.
_KEEP = frozenset(
    [*(m.__name__ for m in EVENT_DATA.values()), *(_event_name(e) for e in EVENT_DATA)]
)


def build(app: FastAPI) -> dict[str, Any]:
    """The whole document: FastAPI's, then the precision above applied to every route."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    _components(doc)
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = doc["paths"][route.path_format][method.lower()]
            _refine(route, operation)
    _prune(doc)
    return doc


def _refine(route: APIRoute, operation: dict[str, Any]) -> None:
    codes = route_codes(route, operation)
    responses: dict[str, Any] = operation["responses"]
    by_status: dict[int, list[ErrorCode]] = {}
    for code in sorted(codes, key=lambda c: (STATUS[c], c.value)):
        by_status.setdefault(STATUS[code], []).append(code)
    for status, response in list(responses.items()):
        declared = response.pop(CODES_KEY, None) is not None
        if (declared or status == "422") and int(status) not in by_status:
            del responses[status]
        elif response.pop(STREAM_KEY, False):
            response["content"] = event_stream_content()
    for error_status, status_codes in by_status.items():
        responses[str(error_status)] = error_response(status_codes)
    limited = ErrorCode.RATE_LIMIT_EXCEEDED in codes
    for response in responses.values():
        headers = response.setdefault("headers", {})
        headers["X-Request-ID"] = {"$ref": f"{_HEADER_REF}X-Request-ID"}
        if limited:
            for name in _RATE_LIMIT_HEADERS:
                headers[name] = {"$ref": f"{_HEADER_REF}{name}"}
    operation["responses"] = dict(sorted(responses.items()))


def install(app: FastAPI) -> None:
    """Serve `build(app)` as /openapi.json, made once on first use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
