"""Exception handlers: every error leaves as `{"detail", "code"}` (SPEC section 3)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from alice.api.openapi import CODES_KEY, STREAM_KEY
from alice.core.errors import STATUS, AliceError, ErrorCode, error_body

log = logging.getLogger("alice.error")

_HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    401: ErrorCode.UNAUTHORIZED,
}


def _json(
    status: int, body: dict[str, object], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


async def alice_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AliceError)
    body = error_body(exc.code, exc.detail)
    if errors := getattr(exc, "errors", None):
        body["errors"] = errors
    return _json(exc.status_code, body, exc.headers)


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": ".".join(str(p) for p in err.get("loc", ())),
            "message": str(err.get("msg", "invalid value")),
        }
        for err in exc.errors()
    ]
    body = error_body(ErrorCode.VALIDATION_ERROR)
    body["errors"] = errors
    return _json(422, body)


async def http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot even decode (bytes that are not UTF-8, say):
        # for the client it is a body that breaks its rules, as malformed JSON is (SPEC 3).
        body = error_body(ErrorCode.VALIDATION_ERROR)
        body["errors"] = [{"field": "body", "message": "The body could not be decoded."}]
        return _json(422, body)
    code = _HTTP_CODES.get(exc.status_code)
    if code is None:
        code = ErrorCode.INTERNAL_ERROR if exc.status_code >= 500 else ErrorCode.VALIDATION_ERROR
    return _json(exc.status_code, error_body(code), getattr(exc, "headers", None))


_UNSTORABLE = "contains characters that cannot be stored (NUL or an unpaired surrogate)"


def _unstorable_body() -> dict[str, object]:
    body = error_body(ErrorCode.VALIDATION_ERROR)
    body["errors"] = [{"field": "body", "message": _UNSTORABLE}]
    return body


async def unencodable_input(_request: Request, exc: Exception) -> JSONResponse:
    """A string the client sent that cannot be encoded (a lone surrogate from a JSON `\\ud800`
    escape reaching the password hasher or the database): the client's data, so a 422."""
    log.info("refused request data that cannot be encoded: %s", type(exc).__name__)
    return _json(422, _unstorable_body())


async def database_error(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DBAPIError) and _is_data_error(exc):
        # The database refused a value the client sent (NUL in PostgreSQL text, say).
        log.info("the database refused request data: %s", type(exc.orig).__name__)
        return _json(422, _unstorable_body())
    if isinstance(exc, DBAPIError) and not _is_connection_error(exc):
        log.error("database error", exc_info=exc)
        return _json(500, error_body(ErrorCode.INTERNAL_ERROR))
    log.warning("database unavailable: %s", type(exc).__name__)
    return _json(503, error_body(ErrorCode.DATABASE_UNAVAILABLE), {"Retry-After": "5"})


def _is_data_error(exc: DBAPIError) -> bool:
    """SQLSTATE class 22 (data exception) or an encoding error, anywhere in the cause chain."""
    seen: BaseException | None = exc.orig
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, UnicodeError):
            return True
        sqlstate = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith("22"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_connection_error(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    name = type(exc.orig).__name__ if exc.orig is not None else ""
    return type(exc).__name__ in {"OperationalError", "InterfaceError"} or any(
        word in name for word in ("Connection", "CannotConnect", "Interface", "Timeout")
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(AliceError, alice_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(PoolTimeoutError, database_error)
    app.add_exception_handler(ConnectionError, database_error)
    app.add_exception_handler(OSError, database_error)
    app.add_exception_handler(UnicodeError, unencodable_input)


def responses(*codes: ErrorCode, stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the error codes a route declares (beyond those its
    dependencies and parameters imply: see `alice.api.openapi`), and with `stream=True` its
    200 as a reply's event stream. The document is built from these in `alice.api.openapi`."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry = out.setdefault(STATUS[code], {"description": "", CODES_KEY: []})
        entry[CODES_KEY].append(code.value)
    if stream:
        out[200] = {"description": "The reply's events.", STREAM_KEY: True}
    return out
