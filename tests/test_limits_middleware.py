"""RequestLimitsMiddleware's decisions, at the ASGI level.

tests/test_request_limits.py attacks the real services over TLS; here the
middleware's framing rules are checked one by one, including requests the
HTTP parsers would refuse before (contradictory lengths), and that a request
without a body goes straight to the application (no body read, no timer).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from sgxcloud.errors import InputError
from sgxcloud.web.limits import RequestLimits, RequestLimitsMiddleware, RouteLimit


def _refuse_unsigned(scope, headers) -> None:  # type: ignore[no-untyped-def]
    if "x-signature" not in headers:
        raise InputError("request not signed")


async def _app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    message = await receive()
    body = json.dumps({"got": len(message["body"]), "more": message["more_body"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


MIDDLEWARE = RequestLimitsMiddleware(
    _app,
    limits=RequestLimits(max_body_bytes=10, body_timeout_s=0.3),
    routes=[
        RouteLimit("POST", "/big", 1000),
        RouteLimit("PUT", "/signed/[^/]+", 10, _refuse_unsigned),
    ],
    render=lambda status, message: {"status": status, "message": message},
)


def _call(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    delay: float = 0.0,
) -> tuple[int, dict, int]:
    """(status, JSON answer, receive() calls the application or middleware made)."""
    calls = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal calls
        calls += 1
        if calls > len(chunks):
            await asyncio.sleep(3600)  # nothing more will come
        await asyncio.sleep(delay)
        return {"type": "http.request", "body": chunks[calls - 1], "more_body": calls < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    asyncio.run(MIDDLEWARE(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"]), calls


def test_a_request_without_a_body_goes_straight_to_the_application() -> None:
    for headers in ([], [(b"content-length", b"0")]):
        assert _call("GET", "/x", headers, [b""]) == (200, {"got": 0, "more": False}, 1)


def test_a_body_within_the_limit_is_read_and_handed_over_whole() -> None:
    status, answer, _ = _call(
        "POST", "/big", [(b"content-length", b"600")], [b"a" * 300, b"b" * 300]
    )
    assert (status, answer) == (200, {"got": 600, "more": False})
    status, answer, _ = _call("POST", "/x", [(b"transfer-encoding", b"chunked")], [b"a" * 5] * 2)
    assert (status, answer) == (200, {"got": 10, "more": False})


@pytest.mark.parametrize(
    ("method", "path", "headers", "chunks", "status"),
    [
        ("POST", "/x", [(b"content-length", b"11")], [b"a" * 11], 413),  # declared: unread
        ("POST", "/big", [(b"content-length", b"1001")], [b""], 413),
        ("POST", "/x", [(b"transfer-encoding", b"chunked")], [b"a" * 6] * 3, 413),  # counted
        ("POST", "/x", [(b"content-length", b"5"), (b"content-length", b"6")], [b""], 400),
        ("POST", "/x", [(b"content-length", b"-5")], [b""], 400),
        ("POST", "/x", [(b"content-length", b"\xb2")], [b""], 400),  # not an ASCII digit
        ("PUT", "/signed/p", [(b"content-length", b"5")], [b"a" * 5], 401),  # before the body
    ],
    ids=[
        "declared",
        "route-limit",
        "chunked",
        "contradictory",
        "negative",
        "non-ascii",
        "unsigned",
    ],
)
def test_refusals(method: str, path: str, headers: list, chunks: list, status: int) -> None:
    got, answer, calls = _call(method, path, headers, chunks)
    assert (got, answer["status"]) == (status, status), answer
    counted = headers[0][0] == b"transfer-encoding"  # no length: refused while it arrives
    assert calls == (2 if counted else 0), "the body was read before refusing"


def test_a_body_that_trickles_is_answered_408() -> None:
    status, answer, _ = _call("POST", "/x", [(b"content-length", b"9")], [b"abc"] * 3, delay=0.2)
    assert (status, answer["status"]) == (408, 408)
