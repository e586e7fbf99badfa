"""Lean FastAPI routes for a service's hottest endpoints, and an app that serves them first.

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
for it answers as before.  A body holding more JSON values than its model's
``max_json_values`` (default :data:`MAX_JSON_VALUES`) is refused so before
it is parsed: pydantic builds the whole input again for every error it
reports, so a body of many small values costs far more than its size says.

:class:`DirectApp` goes one step further: a request for one of its
DirectRoutes skips the generic middleware stack and router (about a tenth
of a millisecond per request) and is served in one call that keeps what that
stack does for it in a service configured as ours are; see its docstring.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Match

from sgxcloud.web.limits import (
    Message,
    Receive,
    RequestLimitsMiddleware,
    RouteLimit,
    Scope,
    Send,
    json_values_within,
)

NOT_JSON = "Input should be a JSON document (Content-Type: application/json)"
Model = TypeVar("Model", bound=BaseModel)
MAX_JSON_VALUES = 1024
"""Values and keys a DirectRoute body may hold unless its model says otherwise
(a ``max_json_values`` class variable sized to the model's legitimate bodies)."""


class DirectRoute(APIRoute):
    """An APIRoute for an endpoint taking at most one JSON body (a pydantic model)
    and returning a ``Response``; use with ``route_class_override`` or as an
    ``APIRouter``'s ``route_class``."""

    respond: Callable[[str | None, Callable[[], Awaitable[bytes]]], Awaitable[Response]]
    """The endpoint's answer to a request with this Content-Type and body
    (read only if the endpoint takes one); set with the route handler."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        dependant = self.dependant
        if (
            dependant.path_params
            or dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
            or dependant.dependencies
            or len(dependant.body_params) > 1
        ):
            raise TypeError(f"{self.path}: a DirectRoute endpoint takes at most one JSON body")
        body_name, model, max_values = None, None, MAX_JSON_VALUES
        if dependant.body_params:
            (field,) = dependant.body_params
            model = field.field_info.annotation
            if not (inspect.isclass(model) and issubclass(model, BaseModel)):
                raise TypeError(f"{self.path}: a DirectRoute body must be a pydantic model")
            body_name = field.name
            max_values = int(getattr(model, "max_json_values", MAX_JSON_VALUES))
        endpoint = self.endpoint
        threaded = not inspect.iscoroutinefunction(endpoint)
        path = self.path

        async def respond(
            content_type: str | None, body: Callable[[], Awaitable[bytes]]
        ) -> Response:
            arguments: dict[str, Any] = {}
            if model is not None:
                arguments[body_name] = validated_body(  # type: ignore[index]
                    model, content_type, await body(), max_values
                )
            if threaded:
                response = await run_in_threadpool(endpoint, **arguments)
            else:
                response = await endpoint(**arguments)
            if not isinstance(response, Response):
                raise TypeError(f"{path}: a DirectRoute endpoint must return a Response")
            return response

        # DirectApp calls this below the middleware stack, with the body reader of its own.
        self.respond = respond

        async def handle(request: Request) -> Response:
            return await respond(request.headers.get("content-type"), request.body)

        return handle


def validated_body(
    model: type[Model], content_type: str | None, body: bytes, max_values: int = MAX_JSON_VALUES
) -> Model:
    """The body as ``model``, or RequestValidationError; every error without its input."""
    if not _is_json(content_type):
        raise RequestValidationError(
            [{"type": "model_attributes_type", "loc": ("body",), "msg": NOT_JSON, "input": None}]
        )
    if not json_values_within(body, max_values):
        raise RequestValidationError(
            [
                {
                    "type": "too_long",
                    "loc": ("body",),
                    "input": None,
                    "msg": f"Input should be a JSON document of at most {max_values} values",
                }
            ]
        )
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {**error, "loc": ("body", *error["loc"])}
                for error in exc.errors(
                    include_url=False, include_context=False, include_input=False
                )
            ]
        ) from None


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule: ``application/json`` or ``application/<anything>+json``."""
    if not content_type:
        return False
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (
        main.startswith("application/") and main.endswith("+json")
    )


_ENCODE = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
).encode


class JSONAnswer(JSONResponse):
    """A :class:`~starlette.responses.JSONResponse`, byte for byte and error for
    error, without building a new encoder for every answer (``json.dumps``
    with options does: most of the cost of rendering a small answer)."""

    def render(self, content: Any) -> bytes:
        return _ENCODE(content).encode("utf-8")


TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}
"""``telemetry=`` for an application whose metrics are its own (FastAPI's native
OpenTelemetry off: nothing exported, nothing checked per request)."""

ExceptionHandler = Callable[[Request, Exception], Any]


@dataclass(frozen=True)
class _Direct:
    route: DirectRoute
    limit: RouteLimit | None


class DirectApp(FastAPI):
    """A FastAPI application serving its :class:`DirectRoute` requests ahead of its stack.

    A FastAPI request passes ServerErrorMiddleware, exception telemetry, the
    application body limit, the user middleware, ExceptionMiddleware,
    AsyncExitStackMiddleware and the router's scan of every route, each a
    coroutine and most wrapping ``send``: on the CAS's two attestation
    requests that was as much CPU as the endpoints' own HTTP work.  Here a
    request whose method and path are those of a DirectRoute without path
    parameters is served in one call that does what that stack does for it:

    * :class:`~sgxcloud.web.limits.RequestLimitsMiddleware`'s limits, with the
      same settings and the route's :class:`~sgxcloud.web.limits.RouteLimit`
      (found once): it is the one user middleware allowed;
    * the application's exception handlers, found as ExceptionMiddleware
      finds them (HTTPException by status, then the exception's classes);
    * any other exception answered by the 500 handler (``Exception`` or
      ``500``, as ServerErrorMiddleware uses it) and raised again after the
      answer, so the server logs it as before.

    Whenever the stack would do more, every request takes it, as in plain
    FastAPI: another user middleware, ``debug``, FastAPI's telemetry not
    turned off (pass ``telemetry=TELEMETRY_OFF``), a ``root_path`` or
    ``max_body_size``, or, for one route, an earlier route matching the same
    request.  Which routes are served directly is decided when the
    application starts (its first request), as its middleware stack is.
    """

    def __init__(self, *args: Any, telemetry: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, telemetry=telemetry, **kwargs)  # type: ignore[arg-type]
        self._telemetry_off = telemetry is not None and all(
            telemetry.get(name) is False for name in TELEMETRY_OFF
        )
        self._direct: dict[tuple[str, str], _Direct] = {}
        self._limits: RequestLimitsMiddleware | None = None
        self._status_handlers: dict[int, ExceptionHandler] = {}
        self._class_handlers: dict[type, ExceptionHandler] = {}
        self._server_error: ExceptionHandler | None = None

    @property
    def direct_routes(self) -> frozenset[tuple[str, str]]:
        """(method, path) of the requests served ahead of the stack (once started)."""
        return frozenset(self._direct)

    def build_middleware_stack(self) -> Any:
        stack = super().build_middleware_stack()
        self._direct = self._direct_table()
        return stack

    def _direct_table(self) -> dict[tuple[str, str], _Direct]:
        if (
            self.debug
            or not self._telemetry_off
            or self.root_path
            or getattr(self, "max_body_size", None) is not None
        ):
            return {}
        self._limits = None
        for middleware in self.user_middleware:
            cls, args, kwargs = middleware
            if cls is not RequestLimitsMiddleware or self._limits is not None:
                return {}
            self._limits = RequestLimitsMiddleware(_never, *args, **kwargs)
        self._status_handlers, self._class_handlers, self._server_error = {}, {}, None
        for key, handler in self.exception_handlers.items():
            if key in (500, Exception):
                self._server_error = handler
            elif isinstance(key, int):
                self._status_handlers[key] = handler
            else:
                self._class_handlers[key] = handler
        table: dict[tuple[str, str], _Direct] = {}
        earlier: list[BaseRoute] = []
        for route in self.router.routes:
            if isinstance(route, DirectRoute) and not route.param_convertors:
                for method in route.methods or ():
                    key = (method, route.path)
                    if key not in table and not any(_full_match(r, *key) for r in earlier):
                        limit = self._limits.route_for(*key) if self._limits else None
                        table[key] = _Direct(route, limit)
            earlier.append(route)
        return table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if scope["type"] == "http":
            if self.middleware_stack is None:
                self.middleware_stack = self.build_middleware_stack()
            direct = self._direct.get((scope["method"], scope["path"]))
            if direct is not None and not scope.get("root_path"):
                scope["app"] = self
                await self._serve(direct, scope, receive, send)
                return
        await super().__call__(scope, receive, send)  # type: ignore[arg-type]

    async def _serve(self, direct: _Direct, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            admitted: Receive | None = receive
            if self._limits is not None:
                admitted = await self._limits.admit(scope, receive, sending, direct.limit)
                if admitted is None:  # refused (answered) or the client left
                    return
            scope["route"], scope["endpoint"] = direct.route, direct.route.endpoint
            try:
                response = await direct.route.respond(
                    _content_type(scope), lambda: _read_body(admitted)
                )
            except Exception as exc:
                handler = self._handler_for(exc)
                if handler is None:
                    raise
                response = await _call(handler, Request(scope, admitted, sending), exc)
                exc.__traceback__ = None  # as Starlette: a reused instance would keep growing one
                if response is None:
                    return
            await response(scope, admitted, sending)
        except Exception as exc:
            # ServerErrorMiddleware's rule: the 500 handler's answer if nothing
            # was sent yet, and the exception raised on for the server to log.
            if self._server_error is None:
                error: Response = PlainTextResponse("Internal Server Error", status_code=500)
            else:
                error = await _call(self._server_error, Request(scope), exc)
            if not started:
                await error(scope, receive, send)
            raise exc

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        if isinstance(exc, HTTPException):
            handler = self._status_handlers.get(exc.status_code)
            if handler is not None:
                return handler
        for cls in type(exc).__mro__:
            handler = self._class_handlers.get(cls)
            if handler is not None:
                return handler
        return None


async def _never(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("DirectApp's limits only admit requests, never pass them on")


async def _call(handler: ExceptionHandler, request: Request, exc: Exception) -> Any:
    """Call an exception handler as Starlette does: a sync one in the thread pool."""
    target: Any = handler
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(target).__call__):
        return await handler(request, exc)
    return await run_in_threadpool(handler, request, exc)


def _full_match(route: BaseRoute, method: str, path: str) -> bool:
    probe = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    return route.matches(probe)[0] == Match.FULL


def _content_type(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name.lower() == b"content-type":
            return value.decode("latin-1")
    return None


async def _read_body(receive: Receive) -> bytes:
    """The whole body (one message when RequestLimitsMiddleware read it), as
    ``Request.body()`` reads it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
