"""A response made straight from a Pydantic model."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Response
from pydantic import BaseModel
from starlette.background import BackgroundTask


class ModelResponse(Response):
    """The model's JSON, serialised once by Pydantic.

    A route that returns its model for FastAPI to answer has it validated again against
    `response_model` and then serialised: on the hottest reads (the current user, the pages
    of the lists) that second pass cost more than building the model. Routes still declare
    `response_model`, which documents them in OpenAPI."""

    media_type = "application/json"

    def __init__(
        self,
        model: BaseModel,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(
            model.model_dump_json(), status_code=status_code, headers=headers, background=background
        )
