"""Every error code of SPEC section 3, the exception that raises it and its OpenAPI entry."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    UNAUTHORIZED = "UNAUTHORIZED"
    INVALID_TOKEN = "INVALID_TOKEN"
    ACCOUNT_DISABLED = "ACCOUNT_DISABLED"
    EMAIL_ALREADY_EXISTS = "EMAIL_ALREADY_EXISTS"
    CONVERSATION_NOT_FOUND = "CONVERSATION_NOT_FOUND"
    GENERATION_IN_PROGRESS = "GENERATION_IN_PROGRESS"
    STREAM_UNAVAILABLE = "STREAM_UNAVAILABLE"
    GENERATION_TIME_LIMIT = "GENERATION_TIME_LIMIT"
    GENERATION_LOST = "GENERATION_LOST"
    SERVER_SHUTTING_DOWN = "SERVER_SHUTTING_DOWN"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    AI_SERVICE_UNAVAILABLE = "AI_SERVICE_UNAVAILABLE"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    TOO_MANY_GENERATIONS = "TOO_MANY_GENERATIONS"
    SERVER_BUSY = "SERVER_BUSY"
    # Accounts (SPEC section 13)
    INVALID_PASSWORD = "INVALID_PASSWORD"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    MAIL_UNAVAILABLE = "MAIL_UNAVAILABLE"
    # Branches (SPEC section 14)
    MESSAGE_NOT_FOUND = "MESSAGE_NOT_FOUND"


STATUS: dict[ErrorCode, int] = {
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.AUTHENTICATION_FAILED: 401,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.ACCOUNT_DISABLED: 403,
    ErrorCode.EMAIL_ALREADY_EXISTS: 409,
    ErrorCode.CONVERSATION_NOT_FOUND: 404,
    ErrorCode.GENERATION_IN_PROGRESS: 409,
    ErrorCode.STREAM_UNAVAILABLE: 503,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.AI_SERVICE_UNAVAILABLE: 503,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.TOO_MANY_GENERATIONS: 429,
    ErrorCode.SERVER_BUSY: 503,
    ErrorCode.INVALID_PASSWORD: 403,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.MAIL_UNAVAILABLE: 503,
    ErrorCode.MESSAGE_NOT_FOUND: 404,
}

DEFAULT_DETAIL: dict[ErrorCode, str] = {
    ErrorCode.VALIDATION_ERROR: "The request is not valid.",
    ErrorCode.AUTHENTICATION_FAILED: "Incorrect email or password.",
    ErrorCode.UNAUTHORIZED: "Not authenticated.",
    ErrorCode.INVALID_TOKEN: "The token is invalid or has expired.",
    ErrorCode.ACCOUNT_DISABLED: "This account is disabled.",
    ErrorCode.EMAIL_ALREADY_EXISTS: "An account with this email already exists.",
    ErrorCode.CONVERSATION_NOT_FOUND: "Conversation not found.",
    ErrorCode.GENERATION_IN_PROGRESS: "A reply is still being generated in this conversation.",
    ErrorCode.STREAM_UNAVAILABLE: "The reply's events cannot be reached from this server.",
    ErrorCode.GENERATION_TIME_LIMIT: "The reply ran past its time limit.",
    ErrorCode.GENERATION_LOST: "The server generating the reply stopped.",
    ErrorCode.SERVER_SHUTTING_DOWN: "The server generating the reply is shutting down.",
    ErrorCode.RATE_LIMIT_EXCEEDED: "Too many requests.",
    ErrorCode.PAYLOAD_TOO_LARGE: "The request body is too large.",
    ErrorCode.NOT_FOUND: "Not found.",
    ErrorCode.METHOD_NOT_ALLOWED: "Method not allowed.",
    ErrorCode.AI_SERVICE_UNAVAILABLE: "The AI service is unavailable.",
    ErrorCode.DATABASE_UNAVAILABLE: "The database is unavailable.",
    ErrorCode.INTERNAL_ERROR: "Internal server error.",
    ErrorCode.QUOTA_EXCEEDED: "Your daily token budget is spent; it renews at midnight UTC.",
    ErrorCode.TOO_MANY_GENERATIONS: "You already have as many replies running as allowed.",
    ErrorCode.SERVER_BUSY: "The server is busy; try again in a moment.",
    ErrorCode.INVALID_PASSWORD: "The password is not correct.",
    ErrorCode.SESSION_NOT_FOUND: "Session not found.",
    ErrorCode.MAIL_UNAVAILABLE: "E-mail cannot be sent from this server.",
    ErrorCode.MESSAGE_NOT_FOUND: "Message not found.",
}


# What OpenAPI says of the codes (SPEC section 8), beside the codes themselves.
# Codes that end a reply inside its stream, as an `error` event (never an HTTP status).
STREAM_ERROR_CODES: tuple[ErrorCode, ...] = (
    ErrorCode.AI_SERVICE_UNAVAILABLE,
    ErrorCode.GENERATION_TIME_LIMIT,
    ErrorCode.GENERATION_LOST,
    ErrorCode.SERVER_SHUTTING_DOWN,
    ErrorCode.DATABASE_UNAVAILABLE,
)
# Codes whose responses always carry `Retry-After`.
RETRY_AFTER_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.RATE_LIMIT_EXCEEDED,
        ErrorCode.DATABASE_UNAVAILABLE,
        ErrorCode.QUOTA_EXCEEDED,
        ErrorCode.TOO_MANY_GENERATIONS,
        ErrorCode.SERVER_BUSY,
    }
)


class AliceError(Exception):
    """A domain error: the handler at the edge turns it into the spec's error body."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, detail: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.detail = detail or DEFAULT_DETAIL[self.code]
        self.headers = headers
        super().__init__(self.detail)

    @property
    def status_code(self) -> int:
        return STATUS[self.code]


class ValidationFailedError(AliceError):
    code = ErrorCode.VALIDATION_ERROR

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.errors = [{"field": field, "message": message}]


class AuthenticationFailedError(AliceError):
    code = ErrorCode.AUTHENTICATION_FAILED


class UnauthorizedError(AliceError):
    code = ErrorCode.UNAUTHORIZED


class InvalidTokenError(AliceError):
    code = ErrorCode.INVALID_TOKEN


class AccountDisabledError(AliceError):
    code = ErrorCode.ACCOUNT_DISABLED


class EmailAlreadyExistsError(AliceError):
    code = ErrorCode.EMAIL_ALREADY_EXISTS


class ConversationNotFoundError(AliceError):
    code = ErrorCode.CONVERSATION_NOT_FOUND


class GenerationInProgressError(AliceError):
    code = ErrorCode.GENERATION_IN_PROGRESS


class MessageNotFoundError(AliceError):
    code = ErrorCode.MESSAGE_NOT_FOUND


class StreamUnavailableError(AliceError):
    code = ErrorCode.STREAM_UNAVAILABLE


class RateLimitExceededError(AliceError):
    code = ErrorCode.RATE_LIMIT_EXCEEDED


class AIServiceUnavailableError(AliceError):
    code = ErrorCode.AI_SERVICE_UNAVAILABLE


class DatabaseUnavailableError(AliceError):
    code = ErrorCode.DATABASE_UNAVAILABLE


class QuotaExceededError(AliceError):
    code = ErrorCode.QUOTA_EXCEEDED


class TooManyGenerationsError(AliceError):
    code = ErrorCode.TOO_MANY_GENERATIONS


class ServerBusyError(AliceError):
    """Past a capacity bound of this process (its turn at password hashing did not come in
    time, or it holds ALICE_MAX_CONNECTIONS connections): 503 with `Retry-After`."""

    code = ErrorCode.SERVER_BUSY


class InvalidPasswordError(AliceError):
    code = ErrorCode.INVALID_PASSWORD


class SessionNotFoundError(AliceError):
    code = ErrorCode.SESSION_NOT_FOUND


class MailUnavailableError(AliceError):
    code = ErrorCode.MAIL_UNAVAILABLE


def error_body(code: ErrorCode, detail: str | None = None) -> dict[str, Any]:
    return {"detail": detail or DEFAULT_DETAIL[code], "code": code.value}
