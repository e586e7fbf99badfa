"""A lean FastAPI route for a service's hottest endpoints.

FastAPI's generic request handling (dependency solving, JSON parsed to Python
objects then validated, the answer validated once more against the response
model, in a second thread-pool hop for a sync endpoint) costs more CPU than
some endpoints' own work.  :class:`DirectRoute` keeps everything FastAPI
derives from the endpoint's signature — the OpenAPI document, the
``response_model`` — but serves a request with the least work that gives the
same answers: the JSON body is validated straight from bytes by its pydantic
model, the endpoint (a sync one in the thread pool, as FastAPI would) returns
its :class:`~starlette.responses.Response` itself.  A body that does not
validate raises :class:`~fastapi.exceptions.RequestValidationError` with the
``("body", ...)`` locations FastAPI would give, so the application's handler
for it answers as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

NOT_JSON = "Input should be a JSON document (Content-Type: application/json)"


class DirectRoute(APIRoute):
    """An APIRoute for an endpoint taking at most one JSON body (a pydantic model)
    and returning a ``Response``; use with ``route_class_override`` or as an
    ``APIRouter``'s ``route_class``."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        dependant = self.dependant
        if (dependant.path_params or dependant.query_params or dependant.header_params
                or dependant.cookie_params or dependant.dependencies
                or len(dependant.body_params) > 1):
            raise TypeError(f"{self.path}: a DirectRoute endpoint takes at most one JSON body")
        body_name, model = None, None
        if dependant.body_params:
            (field,) = dependant.body_params
            model = field.field_info.annotation
            if not (inspect.isclass(model) and issubclass(model, BaseModel)):
                raise TypeError(f"{self.path}: a DirectRoute body must be a pydantic model")
            body_name = field.name
        endpoint = self.endpoint
        threaded = not inspect.iscoroutinefunction(endpoint)
        path = self.path

        async def handle(request: Request) -> Response:
            arguments: dict[str, Any] = {}
            if model is not None:
                arguments[body_name] = _validated(model, request.headers.get("content-type"),  # type: ignore[index]
                                                  await request.body())
            if threaded:
                response = await run_in_threadpool(endpoint, **arguments)
            else:
                response = await endpoint(**arguments)
            if not isinstance(response, Response):
                raise TypeError(f"{path}: a DirectRoute endpoint must return a Response")
            return response

        return handle


def _validated(model: type[BaseModel], content_type: str | None, body: bytes) -> BaseModel:
    if not _is_json(content_type):
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",),
                                       "msg": NOT_JSON, "input": None}])
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])}
             for error in exc.errors(include_url=False, include_context=False,
                                     include_input=False)]
        ) from None


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule: ``application/json`` or ``application/<anything>+json``."""
    if not content_type:
        return False
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/")
                                          and main.endswith("+json"))
