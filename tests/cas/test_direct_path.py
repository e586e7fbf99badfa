"""The attestation's two requests skip FastAPI's stack and answer exactly as it would.

``create_app`` serves ``POST /v1/nonces`` and ``POST /v1/attest`` ahead of the
generic middleware stack (:class:`sgxcloud.web.routing.DirectApp`).  Every
request here is put, as raw ASGI, both through the application (the direct
path) and through its generic stack (``app.middleware_stack``, what every
other route takes): status, headers, body, what was read of the request and
the exception the server sees must be the same.  So a direct path that drops
a body limit, a timeout, an error's shape or the 500 rule fails here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from sgxcloud.cas.backup import BackupError
from sgxcloud.cas.config import ConfigError
from sgxcloud.cas.errors import (
    AccessDenied,
    CollateralError,
    ConflictError,
    EvidenceError,
    MalformedEvidenceError,
    PolicyError,
    PolicyProblem,
)
from sgxcloud.cas.protocol import BindingError, NonceRejected, ProtocolError
from sgxcloud.cas.secrets import MasterKeyError, SecretsError
from sgxcloud.cas.service.app import create_app
from sgxcloud.cas.service.auth import AuthenticationError
from sgxcloud.cas.service.core import (
    AttestationRejected,
    AttestResult,
    Busy,
    MalformedAttestation,
    NonceGrant,
    NotFound,
    NotReady,
)
from sgxcloud.cas.store import DuplicateRow, StoreError
from sgxcloud.cas.tls import TlsSetupError
from sgxcloud.errors import SgxcloudError
from sgxcloud.web.limits import RequestLimits

SECRET = "s3cr3t-value-never-shown"
ATTEST_BODY = json.dumps(
    {"policy": "shop", "service": "web", "nonce": "ab" * 32, "public_key": "k", "evidence": "ZQ=="}
).encode()


class Stub:
    """A service answering fixed values, or raising what a test sets."""

    attest_concurrency = 2
    deployment_id = "d" * 32

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.calls = 0

    def issue_nonce(self, now: int) -> NonceGrant:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return NonceGrant("ab" * 32, now + 600)

    def attest(self, request: Any, now: int) -> AttestResult:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return AttestResult(
            request.policy,
            request.service,
            "c" * 64,
            request.nonce,
            b"sealed",
            "CERT",
            "CA",
            True,
            "UpToDate",
            7,
            "r" * 22,
        )


@dataclass
class Outcome:
    status: int | None = None
    headers: list = field(default_factory=list)
    body: bytes = b""
    reads: int = 0
    raised: str | None = None


def _call(
    asgi,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    delay: float = 0.0,
) -> Outcome:
    outcome = Outcome()

    async def receive() -> dict:
        outcome.reads += 1
        if outcome.reads > len(chunks):
            await asyncio.sleep(3600)  # nothing more will come
        if outcome.reads > 1:
            await asyncio.sleep(delay)  # the first part at once, the others late
        return {
            "type": "http.request",
            "body": chunks[outcome.reads - 1],
            "more_body": outcome.reads < len(chunks),
        }

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            outcome.status, outcome.headers = message["status"], list(message["headers"])
        else:
            outcome.body += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "state": {},
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8443),
    }
    try:
        asyncio.run(asgi(scope, receive, send))
    except Exception as exc:  # the server (uvicorn) logs what the application raises
        outcome.raised = type(exc).__name__
    return outcome


@pytest.fixture
def stub() -> Stub:
    return Stub()


@pytest.fixture
def app(stub: Stub):  # type: ignore[no-untyped-def]
    limits = RequestLimits(max_body_bytes=1000, body_timeout_s=0.3)
    return create_app(
        stub,
        clock=lambda: 1_700_000_000,
        limits=limits,  # type: ignore[arg-type]
        max_attest_bytes=4000,
    )


def _both(app, stub: Stub, *args: Any, **kwargs: Any) -> Outcome:  # type: ignore[no-untyped-def]
    """The direct path's outcome, checked equal to the generic stack's."""
    calls = stub.calls
    direct = _call(app, *args, **kwargs)
    direct_calls, stub.calls = stub.calls - calls, calls

    async def generic(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        scope["app"] = app  # what Starlette.__call__ does before its stack
        await app.middleware_stack(scope, receive, send)

    stacked = _call(generic, *args, **kwargs)
    assert direct == stacked
    assert direct_calls == stub.calls - calls  # the service was asked the same
    return direct


def _json(length: int | None = None, content_type: bytes = b"application/json") -> list:
    headers = [(b"host", b"cas"), (b"content-type", content_type)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return headers


def test_the_attestation_requests_skip_the_stack(app, stub: Stub) -> None:  # type: ignore[no-untyped-def]
    _call(app, "GET", "/v1/health/live", [], [b""])  # starts the application
    assert app.direct_routes == {("POST", "/v1/nonces"), ("POST", "/v1/attest")}
    entered = []
    stack = app.middleware_stack

    async def counted(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        entered.append(scope["path"])
        await stack(scope, receive, send)

    app.middleware_stack = counted
    assert _call(app, "POST", "/v1/nonces", [(b"content-length", b"0")], [b""]).status == 200
    assert _call(app, "POST", "/v1/attest", _json(len(ATTEST_BODY)), [ATTEST_BODY]).status == 200
    assert entered == []
    # Everything else still takes the stack, the attestation paths' other methods too.
    assert _call(app, "GET", "/v1/attest", [], [b""]).status == 405
    assert _call(app, "GET", "/v1/health/live", [], [b""]).status == 200
    assert entered == ["/v1/attest", "/v1/health/live"]


def test_answers_are_those_of_the_stack(app, stub: Stub) -> None:  # type: ignore[no-untyped-def]
    nonce = _both(app, stub, "POST", "/v1/nonces", [(b"content-length", b"0")], [b""])
    assert nonce.status == 200 and json.loads(nonce.body)["nonce"] == "ab" * 32
    accepted = _both(app, stub, "POST", "/v1/attest", _json(len(ATTEST_BODY)), [ATTEST_BODY])
    assert accepted.status == 200 and json.loads(accepted.body)["audit_ref"] == "r" * 22
    assert (b"content-type", b"application/json") in accepted.headers
    chunked = _both(
        app,
        stub,
        "POST",
        "/v1/attest",
        [*_json(), (b"transfer-encoding", b"chunked")],
        [ATTEST_BODY[:10], ATTEST_BODY[10:]],
    )
    assert chunked.status == 200 and chunked.reads == 2


@pytest.mark.parametrize(
    ("headers", "chunks", "status", "reads"),
    [
        (_json(4001), [b"{" * 4001], 413, 0),  # declared above the route's limit: never read
        ([*_json(), (b"transfer-encoding", b"chunked")], [b"{" * 3000] * 3, 413, 2),  # counted
        ([*_json(5), (b"content-length", b"6")], [b"{}"], 400, 0),  # contradictory lengths
        (_json(-5), [b""], 400, 0),
        (_json(10), [b"{", b"}"], 408, 2),  # the second part comes after body_timeout_s
    ],
    ids=["declared", "chunked", "contradictory", "negative", "trickle"],
)
def test_limits_hold_on_the_direct_path(
    app,
    stub: Stub,
    headers: list,
    chunks: list,  # type: ignore[no-untyped-def]
    status: int,
    reads: int,
) -> None:
    outcome = _both(
        app, stub, "POST", "/v1/attest", headers, chunks, delay=1.0 if status == 408 else 0.0
    )
    assert (outcome.status, outcome.reads, stub.calls) == (status, reads, 0)
    assert (b"connection", b"close") in outcome.headers  # the rest is never read
    label = {400: "bad-request", 408: "timeout", 413: "too-large"}[status]
    assert json.loads(outcome.body)["error"] == label


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"policy": "p"}', b"application/json"),
        (b"not json", b"application/json"),
        (b"[" * 1000 + b"]" * 1000, b"application/json"),
        (ATTEST_BODY, b"text/plain"),
    ],
    ids=["missing", "not-json", "deep", "not-json-type"],
)
def test_bad_bodies_answer_as_the_stack(
    app,
    stub: Stub,
    content: bytes,  # type: ignore[no-untyped-def]
    content_type: bytes,
) -> None:
    outcome = _both(app, stub, "POST", "/v1/attest", _json(len(content), content_type), [content])
    assert outcome.status == 400 and json.loads(outcome.body)["error"] == "bad-request"


@pytest.mark.parametrize(
    ("error", "status", "label"),
    [
        (MalformedEvidenceError("bad quote"), 400, "bad-request"),
        (
            AttestationRejected([f"policy says {SECRET}"], audit_seq=9, audit_ref="r" * 22),
            403,
            "attestation-rejected",
        ),
        (EvidenceError("stale", code="collateral-expired"), 403, "attestation-rejected"),
        (PolicyError("x", "bad", [PolicyProblem("x", "bad")]), 400, "bad-request"),
        (ProtocolError("bad key"), 400, "bad-request"),
        (MalformedAttestation("bad evidence", audit_seq=3, audit_ref="m" * 22), 400, "bad-request"),
        (AuthenticationError("who"), 401, "unauthenticated"),
        (AccessDenied("no"), 403, "forbidden"),
        (NotFound("no policy"), 404, "not-found"),
        (ConflictError("moved"), 409, "conflict"),
        (CollateralError("PCCS down"), 503, "unavailable"),
        (NotReady("starting"), 503, "unavailable"),
        (Busy("same work under way"), 503, "unavailable"),
        (NonceRejected("nonce used"), 403, "attestation-rejected"),
        (BindingError("not bound"), 403, "attestation-rejected"),
        (StoreError("database gone"), 503, "unavailable"),
        (DuplicateRow("a concurrent writer won"), 503, "unavailable"),
        (BackupError("no backup method"), 503, "unavailable"),
        (SecretsError(f"master key {SECRET}"), 500, "internal"),
        (MasterKeyError(f"no master key with id {SECRET}"), 500, "internal"),
        (ConfigError("invalid setting"), 400, "bad-request"),
        (TlsSetupError("bad certificate"), 400, "bad-request"),
        (SgxcloudError("other"), 400, "bad-request"),
        (RuntimeError(f"bug holding {SECRET}"), 500, "internal"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
@pytest.mark.parametrize("path", ["/v1/nonces", "/v1/attest"])
def test_service_errors_answer_as_the_stack(
    app,
    stub: Stub,
    caplog,
    path: str,  # type: ignore[no-untyped-def]
    error: Exception,
    status: int,
    label: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    stub.error = error
    content = ATTEST_BODY if path == "/v1/attest" else b""
    outcome = _both(app, stub, "POST", path, _json(len(content)), [content])
    body = json.loads(outcome.body)
    assert (outcome.status, body["error"]) == (status, label)
    assert SECRET not in outcome.body.decode() and SECRET not in caplog.text
    # Only a bug reaches the server (which logs it): typed errors are answers.
    assert outcome.raised == ("RuntimeError" if isinstance(error, RuntimeError) else None)
    if status == 500:
        assert body["message"] == "internal error"
    elif isinstance(error, SgxcloudError) and not isinstance(error, AttestationRejected):
        assert body["message"] == str(error)
        assert body.get("code") == (error.code if isinstance(error, EvidenceError) else None)


def test_attestations_run_on_their_own_threads_no_more_at_once_than_configured() -> None:
    """``attest_concurrency`` threads named cas-attest: the others wait their turn in the queue."""
    inside, most, names = 0, 0, set()
    count = threading.Lock()

    class Slow(Stub):
        def attest(self, request: Any, now: int) -> AttestResult:
            nonlocal inside, most
            with count:
                inside += 1
                most = max(most, inside)
                names.add(threading.current_thread().name)
            time.sleep(0.02)
            with count:
                inside -= 1
            return super().attest(request, now)

    app = create_app(Slow())  # type: ignore[arg-type]
    sent: list[int] = []

    async def one() -> None:
        async def receive() -> dict:
            return {"type": "http.request", "body": ATTEST_BODY, "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent.append(message["status"])

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/attest",
            "root_path": "",
            "headers": _json(len(ATTEST_BODY)),
            "query_string": b"",
        }
        await app(scope, receive, send)

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(8)))

    asyncio.run(many())
    assert sent == [200] * 8
    assert most == Stub.attest_concurrency
    assert len(names) == Stub.attest_concurrency and all(n.startswith("cas-attest") for n in names)
