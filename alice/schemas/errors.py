"""The error bodies of SPEC section 3."""

from pydantic import BaseModel


class ErrorResponse(BaseModel):
    detail: str
    code: str


class FieldError(BaseModel):
    field: str
    message: str


class ValidationErrorResponse(ErrorResponse):
    errors: list[FieldError]
