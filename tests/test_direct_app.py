"""DirectApp serves DirectRoutes ahead of its stack only where the stack would add nothing.

tests/cas/test_direct_path.py compares the CAS's answers on both paths; here
the rule for when a request may skip FastAPI's stack is checked on small
applications: anything the stack would do (another middleware, debug pages,
telemetry, a root path, an earlier route taking the request) keeps it there.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

from sgxcloud.web.limits import RequestLimits, RequestLimitsMiddleware, RouteLimit
from sgxcloud.web.routing import (
    MAX_JSON_VALUES,
    TELEMETRY_OFF,
    DirectApp,
    DirectRoute,
    JSONAnswer,
)


class Item(BaseModel):
    n: int


async def _echo(item: Item) -> JSONResponse:
    if item.n == 404:
        raise HTTPException(404, "no such n")
    if item.n == 418:
        raise LookupError("a typed refusal")
    return JSONResponse({"n": item.n})


def _app(**options: Any) -> DirectApp:
    app = DirectApp(**{"telemetry": TELEMETRY_OFF, **options})
    app.router.add_api_route("/echo", _echo, methods=["POST"], route_class_override=DirectRoute)

    @app.get("/plain")
    def plain() -> dict:
        return {"plain": True}

    return app


def _started(app: FastAPI) -> TestClient:
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/plain").status_code == 200
    return client


def test_a_direct_route_is_served_ahead_of_the_stack() -> None:
    app = _app()
    client = _started(app)
    assert app.direct_routes == {("POST", "/echo")}
    stack, entered = app.middleware_stack, []

    async def counted(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        entered.append(scope["path"])
        await stack(scope, receive, send)

    app.middleware_stack = counted
    assert client.post("/echo", json={"n": 3}).json() == {"n": 3}
    assert entered == []


def test_exception_handlers_are_found_as_the_stack_finds_them() -> None:
    app = _app()

    @app.exception_handler(404)
    async def missing(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"missing": exc.detail}, status_code=404)

    @app.exception_handler(LookupError)
    def typed(_request: Request, exc: Exception) -> JSONResponse:  # sync: the thread pool
        return JSONResponse({"typed": str(exc)}, status_code=418)

    client = _started(app)
    assert app.direct_routes
    answer = client.post("/echo", json={"n": 404})
    assert (answer.status_code, answer.json()) == (404, {"missing": "no such n"})
    answer = client.post("/echo", json={"n": 418})
    assert (answer.status_code, answer.json()) == (418, {"typed": "a typed refusal"})
    answer = client.post("/echo", json={"n": "x"})  # FastAPI's own validation handler
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "n"]


def test_without_a_500_handler_a_bug_is_starlettes_plain_500_and_reaches_the_server() -> None:
    async def broken(item: Item) -> JSONResponse:
        raise KeyError("bug")

    app = _app()
    app.router.add_api_route("/broken", broken, methods=["POST"], route_class_override=DirectRoute)
    answer = _started(app).post("/broken", json={"n": 1})
    assert (answer.status_code, answer.text) == (500, "Internal Server Error")
    assert ("POST", "/broken") in app.direct_routes
    with pytest.raises(KeyError):  # raised on, for the server to log
        TestClient(app).post("/broken", json={"n": 1})


@pytest.mark.parametrize(
    "change",
    [
        lambda app: app.add_middleware(CORSMiddleware, allow_origins=["https://x"]),
        lambda app: setattr(app, "debug", True),
        lambda app: setattr(app, "root_path", "/prefix"),
    ],
    ids=["other-middleware", "debug", "root-path"],
)
def test_whatever_the_stack_would_add_keeps_every_request_there(change) -> None:  # type: ignore[no-untyped-def]
    app = _app()
    change(app)
    client = _started(app)
    assert app.direct_routes == frozenset()
    assert client.post("/echo", json={"n": 3}).json() == {"n": 3}


def test_telemetry_not_turned_off_keeps_every_request_in_the_stack() -> None:
    for telemetry in (None, {"tracing": False}, {**TELEMETRY_OFF, "metrics": True}):
        app = _app(telemetry=telemetry)
        _started(app)
        assert app.direct_routes == frozenset(), telemetry


def test_request_limits_are_the_one_middleware_kept_and_applied() -> None:
    app = _app()
    app.add_middleware(
        RequestLimitsMiddleware,
        limits=RequestLimits(max_body_bytes=100),
        routes=[RouteLimit("POST", "/echo", 8)],
        render=lambda status, message: {"status": status, "message": message},
    )
    client = _started(app)
    assert app.direct_routes == {("POST", "/echo")}
    assert client.post("/echo", json={"n": 3}).status_code == 200  # 7 bytes
    refused = client.post("/echo", json={"n": 12345})
    assert (refused.status_code, refused.json()["status"]) == (413, 413)


def test_an_earlier_route_taking_the_request_keeps_it() -> None:
    app = DirectApp(telemetry=TELEMETRY_OFF)
    router = APIRouter()

    @router.post("/{anything}")
    def first(anything: str) -> dict:
        return {"first": anything}

    app.include_router(router)
    app.router.add_api_route("/echo", _echo, methods=["POST"], route_class_override=DirectRoute)
    client = _started_without_plain(app)
    assert app.direct_routes == frozenset()
    assert client.post("/echo", json={"n": 3}).json() == {"first": "echo"}


def _started_without_plain(app: FastAPI) -> TestClient:
    client = TestClient(app, raise_server_exceptions=False)
    client.get("/nothing")
    return client


def test_a_direct_route_with_path_parameters_is_refused() -> None:
    async def by_name(name: str) -> JSONResponse:
        return JSONResponse({"name": name})

    with pytest.raises(TypeError, match="at most one JSON body"):
        DirectApp().router.add_api_route(
            "/x/{name}", by_name, methods=["POST"], route_class_override=DirectRoute
        )


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(content=_JSON)
def test_a_json_answer_is_a_json_response_byte_for_byte(content: Any) -> None:
    answer, response = JSONAnswer(content), JSONResponse(content)
    assert (answer.body, answer.raw_headers) == (response.body, response.raw_headers)


@pytest.mark.parametrize(
    "content",
    [float("nan"), {"x": float("inf")}, {"x": b"bytes"}, "\ud800"],
    ids=["nan", "inf", "bytes", "surrogate"],
)
def test_a_json_answer_refuses_what_a_json_response_refuses(content: Any) -> None:
    with pytest.raises(Exception) as refused:
        JSONResponse(content)
    with pytest.raises(type(refused.value)):
        JSONAnswer(content)


class Few(BaseModel):
    max_json_values: ClassVar[int] = 4
    n: int


async def _few(few: Few) -> JSONResponse:
    return JSONResponse({"n": few.n})


def test_a_body_of_more_values_than_its_model_allows_is_refused_unparsed() -> None:
    app = _app()
    app.router.add_api_route("/few", _few, methods=["POST"], route_class_override=DirectRoute)
    client = _started(app)
    assert client.post("/few", json={"n": 1}).json() == {"n": 1}
    refused = client.post("/few", json={"n": 1, "x": [1, 2, 3]})
    assert refused.status_code == 422  # FastAPI's default handler for RequestValidationError
    assert refused.json()["detail"][0]["msg"] == (
        "Input should be a JSON document of at most 4 values"
    )
    assert refused.json()["detail"][0].get("input") is None  # never echoed
    # Without a bound of its own, a model takes MAX_JSON_VALUES.
    many = b'{"n": 1, "x": [' + b",".join([b"0"] * MAX_JSON_VALUES) + b"]}"
    refused = client.post("/echo", content=many, headers={"content-type": "application/json"})
    assert refused.json()["detail"][0]["msg"].endswith(f"at most {MAX_JSON_VALUES} values")
    # Four separators outside strings (Few ignores unknown fields): within its bound.
    assert client.post(
        "/few",
        content=b'{"n": 7, "s": "a, b: [c] {d}, \\"e: [f]"}',
        headers={"content-type": "application/json"},
    ).json() == {"n": 7}
