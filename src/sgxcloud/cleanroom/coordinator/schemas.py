"""Wire shapes of the coordinator's HTTP API (pydantic models, hence the OpenAPI document).

Only the error answer is a model: the other answers are the coordinator's
own dictionaries, described in docs/cleanroom/api.md and the published JSON
schemas (result, audit entry, status).
"""

from __future__ import annotations

from pydantic import BaseModel

# No docstrings on the models: pydantic would publish them as descriptions.


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):  # every error answer, whatever its status
    error: ErrorBody
