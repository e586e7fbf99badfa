"""What both services' OpenAPI documents say about bad input: 400 in the service's own
error shape, never FastAPI's 422 ``{"detail": [...]}``.

Each service turns :class:`~fastapi.exceptions.RequestValidationError` into
a 400 answer of its own shape; FastAPI still documents a 422 for every
operation with parameters, which :func:`drop_validation_422` removes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def drop_validation_422(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` without FastAPI's 422 responses and their schemas (in place; returned)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    return document


def document_400_not_422(app: FastAPI) -> None:
    """Have ``app``'s OpenAPI document (served and committed) without the 422s."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = drop_validation_422(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def first_problem(exc: RequestValidationError) -> tuple[str, str]:
    """(where, what) of a request's first validation problem, e.g. ``("query.nonce",
    "String should match pattern ...")``: the field's path (a body's without the
    ``body`` prefix) and pydantic's message, never the value sent (it may be a secret)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return where, str(first.get("msg", "invalid request"))
