"""Exception handlers: every error leaves as `{"detail", "code"}` (SPEC section 3)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from alice.core.errors import AliceError, ErrorCode, error_body

log = logging.getLogger("alice.error")

_HTTP_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
               413: ErrorCode.PAYLOAD_TOO_LARGE, 401: ErrorCode.UNAUTHORIZED}


def _json(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> JSONResponse:
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
    code = _HTTP_CODES.get(exc.status_code)
    if code is None:
        code = ErrorCode.INTERNAL_ERROR if exc.status_code >= 500 else ErrorCode.VALIDATION_ERROR
    return _json(exc.status_code, error_body(code), getattr(exc, "headers", None))


async def database_error(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DBAPIError) and not _is_connection_error(exc):
        log.error("database error", exc_info=exc)
        return _json(500, error_body(ErrorCode.INTERNAL_ERROR))
    log.warning("database unavailable: %s", type(exc).__name__)
    return _json(503, error_body(ErrorCode.DATABASE_UNAVAILABLE), {"Retry-After": "5"})


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
