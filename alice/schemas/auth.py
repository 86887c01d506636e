"""Request and response models of /api/v1/auth (SPEC section 4)."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from alice.core.passwords import COMMON_MESSAGE, LOCAL_PART_MESSAGE, is_common, is_local_part

PASSWORD_MIN = 8
PASSWORD_MAX = 128
EMAIL_MAX = 254


def _email(value: str) -> str:
    if len(value) > EMAIL_MAX:
        raise ValueError(f"must be at most {EMAIL_MAX} characters")
    if value != value.strip() or "\x00" in value:
        raise ValueError("is not a valid email address")
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"is not a valid email address: {exc}") from None
    normalized = result.normalized.lower()
    if len(normalized) > EMAIL_MAX:
        raise ValueError(f"must be at most {EMAIL_MAX} characters")
    return normalized


def _login_email(value: str) -> str:
    # Normalised as registration stores it (so an NFD spelling finds its account); what does
    # not parse as an address is only lower-cased, and the login fails as any wrong one does.
    try:
        return _email(value)
    except ValueError:
        return value.strip().lower()


def _password(value: str) -> str:
    # Counted in code points, never trimmed or normalised: verified exactly as received.
    if not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise ValueError(f"must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    if not any(c.isupper() for c in value):
        raise ValueError("must contain at least one upper-case letter")
    if not any(c.isdigit() for c in value):
        raise ValueError("must contain at least one digit")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if is_common(value):
        raise ValueError(COMMON_MESSAGE)
    return value


def _display_name(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 100:
        raise ValueError("must be 1 to 100 characters after trimming")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    if not any(unicodedata.category(c)[0] not in "CZ" for c in value):
        raise ValueError("must contain a visible character")
    return value


Email = Annotated[str, AfterValidator(_email)]
Password = Annotated[str, AfterValidator(_password)]
DisplayName = Annotated[str, AfterValidator(_display_name)]


class UserCreate(BaseModel):
    email: Email = Field(examples=["ada@example.com"])
    password: Password = Field(examples=["SecurePass123"])
    display_name: DisplayName | None = Field(default=None, examples=["Ada"])

    @field_validator("password")
    @classmethod
    def _password_not_local_part(cls, value: str, info: ValidationInfo) -> str:
        email = info.data.get("email")  # validated first (declared first); absent if invalid
        if email and is_local_part(value, email):
            raise ValueError(LOCAL_PART_MESSAGE)
        return value


class LoginRequest(BaseModel):
    # Login does not apply the password rules: a wrong password is AUTHENTICATION_FAILED,
    # not a validation error that would tell what the rules are for the account.
    email: Annotated[str, StringConstraints(max_length=EMAIL_MAX), AfterValidator(_login_email)] = (
        Field(examples=["ada@example.com"])
    )
    password: Annotated[str, StringConstraints(max_length=PASSWORD_MAX)] = Field(
        examples=["SecurePass123"]
    )


class RefreshRequest(BaseModel):
    # Absent or null only with the cookie transport (X-Token-Transport: cookie, SPEC 13):
    # without that header the route still requires it (422 on body.refresh_token).
    refresh_token: Annotated[str, StringConstraints(max_length=4096)] | None = None


class TokenResponse(BaseModel):
    access_token: str
    # null when the refresh token went into the `alice_refresh` cookie (SPEC section 13).
    refresh_token: str | None
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(examples=[900])


class UserResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    display_name: str
    is_active: bool
    created_at: datetime


class ProfileUpdate(BaseModel):
    display_name: DisplayName = Field(examples=["Ada Lovelace"])


class PasswordChange(BaseModel):
    current_password: Annotated[str, StringConstraints(max_length=PASSWORD_MAX)]
    new_password: Password = Field(examples=["NewSecurePass456"])


class AccountDelete(BaseModel):
    password: Annotated[str, StringConstraints(max_length=PASSWORD_MAX)]


class PasswordForgot(BaseModel):
    email: Email = Field(examples=["ada@example.com"])


class PasswordReset(BaseModel):
    token: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    new_password: Password = Field(examples=["NewSecurePass456"])


class AcceptedResponse(BaseModel):
    detail: str


class SessionResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip: str | None
    current: bool


class SessionList(BaseModel):
    items: list[SessionResponse]
