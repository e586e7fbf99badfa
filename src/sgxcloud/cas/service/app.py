"""The HTTP API: decode, call :class:`CasService`, encode.  Nothing else lives here.

Service calls touch the database and may generate keys, so they run on
threads, never on the event loop: attestations on an executor of their own
sized to the service's ``attest_concurrency``, everything else in the shared
thread pool (plain ``def`` handlers, or ``run_in_threadpool`` where a handler
must first read the raw body to check its signature).

Typed errors become status codes in one table (``STATUS``); any other
exception is a bug and answers a bare 500 without detail, so neither secrets
nor internals can leak through an error body.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from sgxcloud.cas import answers
from sgxcloud.cas.errors import (
    AccessDenied,
    CollateralError,
    ConflictError,
    EvidenceError,
    MalformedEvidenceError,
    PolicyError,
    RejectionsLimited,
    RequestAlreadyReceived,
)
from sgxcloud.cas.protocol import AUDIT_MORE_HEADER, HPKE_SUITE_NAME, ProtocolError
from sgxcloud.cas.secrets import SecretsError
from sgxcloud.cas.service import auth, schemas
from sgxcloud.cas.service.core import (
    AttestationRejected,
    AttestRequest,
    CasService,
    MalformedAttestation,
    NotFound,
    NotReady,
)
from sgxcloud.cas.store import StoreError
from sgxcloud.errors import SgxcloudError
from sgxcloud.signed_requests import signed_path
from sgxcloud.web.limits import KIB, MIB, RequestLimits, RequestLimitsMiddleware, RouteLimit
from sgxcloud.web.offload import OffloadThreads
from sgxcloud.web.openapi import drop_validation_422, first_problem
from sgxcloud.web.routing import (
    TELEMETRY_OFF,
    DirectApp,
    DirectRoute,
    JSONAnswer,
    validated_body,
)

log = logging.getLogger(__name__)

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

API_VERSION = "1"
REJECTED_CODE = "rejected"
"""The one verdict code a rejected enclave is told, whatever the reasons."""

# Most specific first: (error class, HTTP status, error label).
STATUS: list[tuple[type[Exception], int, str]] = [
    (MalformedEvidenceError, 400, "bad-request"),
    (AttestationRejected, 403, "attestation-rejected"),
    (EvidenceError, 403, "attestation-rejected"),
    (PolicyError, 400, "bad-request"),
    (ProtocolError, 400, "bad-request"),
    (RequestAlreadyReceived, 409, "already-received"),  # may have been carried out
    (auth.AuthenticationError, 401, "unauthenticated"),
    (AccessDenied, 403, "forbidden"),
    (NotFound, 404, "not-found"),
    (ConflictError, 409, "conflict"),
    (RejectionsLimited, 429, "too-many-requests"),
    (CollateralError, 503, "unavailable"),
    (NotReady, 503, "unavailable"),
    (StoreError, 503, "unavailable"),
    (SecretsError, 500, "internal"),  # a master key problem is the operator's, not the caller's
]

_ERRORS = {
    status: {"model": schemas.ErrorBody} for status in (400, 401, 403, 404, 408, 409, 413, 429, 503)
}

# Error labels of the refusals made before a request reaches a handler.
_LIMIT_LABELS = {400: "bad-request", 401: "unauthenticated", 408: "timeout", 413: "too-large"}

MAX_ATTEST_BODY_BYTES = 96 * KIB
"""Default body limit of POST /v1/attest: evidence is at most 64 KiB of base64
(schemas.MAX_EVIDENCE_CHARS), the key 4 KiB; a real one is ~11 KiB."""
MAX_POLICY_BODY_BYTES = 2 * MIB
"""Default body limit of PUT /v1/policies (the policy text itself is bounded by the
service's ``max_policy_bytes``, 256 KiB by default, checked before it is parsed)."""


def _limit_error(status: int, message: str) -> dict:
    label = _LIMIT_LABELS.get(status, "bad-request")
    return schemas.ErrorBody(error=label, message=message).model_dump(exclude_none=True)


_RAW_BODIES: tuple[type[BaseModel], ...] = (schemas.PolicyApplyBody,)
"""Models of bodies read raw (checked before parsing), documented as FastAPI would."""


def _json_body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` documenting a raw body as the body parameter ``model``."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": True}}


class _Cas:
    """What the handlers of one app share: the service (None: documentation only),
    the clock, the owners' signature settings and the attestations' threads."""

    def __init__(
        self,
        app: FastAPI,
        service: CasService | None,
        *,
        clock: Callable[[], float],
        max_skew: int,
        certificates: auth.OwnerCertificates,
    ) -> None:
        self.app = app
        self.service = service
        self.clock = clock
        self.max_skew = max_skew
        self.certificates = certificates
        # Attestations run on threads of their own, as many as the service works
        # on at once: the others wait in the queue, not on a lock in one of the
        # shared pool's threads (whose wake-ups and hand-offs cost about a tenth
        # of the server's CPU under load), and are handed back to the loop
        # without an executor's futures and semaphore (sgxcloud.web.offload).
        self.attest_workers = OffloadThreads(
            getattr(service, "attest_concurrency", 1), "cas-attest"
        )

    def now(self) -> int:
        return int(self.clock())

    def cas(self) -> CasService:
        if self.service is None:
            raise NotReady("no service behind this application (documentation only)")
        return self.service

    def deployment(self) -> str:
        return self.cas().deployment_id

    async def caller(self, request: Request) -> str:
        body = await request.body()
        path = signed_path(request.url.path, request.url.query)
        peer = request.scope.get("state", {}).get(auth.PEER_CERTIFICATE_STATE)
        # Off the event loop: a signature check costs up to a few ms of CPU,
        # and every caller (enclaves included) waits on the loop.
        who = await run_in_threadpool(
            auth.authenticate,
            request.headers,
            request.method,
            path,
            body,
            now=self.now(),
            max_skew=self.max_skew,
            deployment=self.cas().deployment_id,
            audiences=self.app.state.audiences,
            tls_client_certificate=peer,
            certificates=self.certificates,
        )
        if who.spend_id is not None:
            # Committed before the request acts: a replay is refused even if
            # this request fails later (e.g. a conflicting update).
            await run_in_threadpool(
                self.cas().spend_request, who.spend_id, who.spend_until, self.now()
            )
        return who.id

    def signed(self, scope: dict, headers: Mapping[str, str]) -> None:
        """The owner routes' signature headers, checked before any body is read."""
        auth.check_headers(
            headers,
            now=self.now(),
            max_skew=self.max_skew,
            tls_client_certificate=scope.get("state", {}).get(auth.PEER_CERTIFICATE_STATE),
        )

    # The two requests of every attestation: FastAPI's generic handling cost
    # as much CPU as their HTTP/TLS, so they are served on a DirectRoute
    # (body validated from bytes once, no second validation of the answer)
    # and answer JSON built here.  response_model still documents the answer;
    # tests check the answers against it.  A DirectRoute endpoint is given no
    # Request, so these two are the shared object's methods.
    async def nonce(self) -> JSONAnswer:
        """A fresh single-use nonce for the enclave to bind into REPORTDATA.

        Pure CPU (an authenticated nonce, stored only when spent): on the event loop.
        """
        grant = self.cas().issue_nonce(int(self.clock()))  # self.now(), one call less
        return JSONAnswer({"nonce": grant.nonce, "expires_at": grant.expires_at})

    async def attest(self, body: schemas.AttestBody) -> JSONAnswer:
        """Verify evidence, binding, nonce and policy; answer the sealed configuration.

        A rejection answers 403 with code 'rejected' and the audit entry's
        ref only: the reasons are for the policy's owners (GET /v1/audit).
        """
        request = AttestRequest(
            body.policy, body.service, body.nonce, body.public_key, body.evidence
        )
        result = await self.attest_workers.call(self.cas().attest, request, int(self.clock()))
        return JSONAnswer(
            {
                "policy": result.policy,
                "service": result.service,
                "policy_hash": result.policy_hash,
                "nonce": result.nonce,
                "hpke_suite": HPKE_SUITE_NAME,
                "sealed_configuration": base64.b64encode(result.sealed_configuration).decode(),
                "certificate": result.certificate_pem,
                "ca_certificate": result.ca_certificate_pem,
                "simulated": result.simulated,
                "tcb_status": result.tcb_status,
                "audit_ref": result.audit_ref,
            }
        )


def _shared(request: Request) -> _Cas:
    return request.app.state.cas


async def _typed_error(_request: Request, exc: SgxcloudError) -> JSONResponse:
    return _error_response(exc)


async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    where, what = first_problem(exc)
    body = schemas.ErrorBody(error="bad-request", message=what, field=where)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=400)


async def _bug(_request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error handling a request: %s", type(exc).__name__)
    body = schemas.ErrorBody(error="internal", message="internal error")
    return JSONResponse(body.model_dump(exclude_none=True), status_code=500)


_ROUTES: list[tuple[str, str, Callable[..., Any] | str, dict[str, Any]]] = []
"""The API's routes in the order they are served and documented (``create_app``):
an endpoint, or the name of a :class:`_Cas` method served on a DirectRoute."""


def _route(method: str, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """Declare an endpoint of the API, as ``app.get``/``app.put`` would; ``create_app``
    adds them to each app as its own routes (no ``include_router``)."""

    def register(endpoint: Endpoint) -> Endpoint:
        _ROUTES.append((method, path, endpoint, options))
        return endpoint

    return register


def _direct(method: str, path: str, name: str, **options: Any) -> None:
    """Declare ``_Cas.<name>`` served on a lean :class:`DirectRoute`, documented as any other."""
    _ROUTES.append((method, path, name, {"route_class_override": DirectRoute, **options}))


@_route("GET", "/v1/health", response_model=schemas.HealthResponse, tags=["service"])
def health(request: Request) -> schemas.HealthResponse:
    """State, database kind, and the deployment id owners' signatures must name."""
    cas = _shared(request).cas
    return schemas.HealthResponse(
        state=cas().state, database=cas().database.dialect, deployment=cas().deployment_id
    )


@_route(
    "GET",
    "/v1/health/live",
    response_model=schemas.ProbeResponse,
    tags=["service"],
    response_model_exclude_none=True,
)
async def live() -> schemas.ProbeResponse:
    """Liveness: the process answers (restart it if not). Touches nothing else."""
    return schemas.ProbeResponse(ok=True, check="live")


@_route("GET", "/v1/health/ready", response_model=schemas.ProbeResponse, tags=["service"])
def ready(request: Request) -> JSONResponse:
    """Readiness: started and the database answers (503 otherwise): route traffic here."""
    problem = _shared(request).cas().readiness_problem()
    body = schemas.ProbeResponse(ok=problem is None, check="ready", problem=problem)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503 if problem else 200)


_direct("POST", "/v1/nonces", "nonce", response_model=schemas.NonceResponse, tags=["attestation"])
_direct("POST", "/v1/attest", "attest", response_model=schemas.AttestResponse, tags=["attestation"])


def _decoded_apply(
    shared: _Cas, content_type: str | None, raw: bytes, when: int
) -> tuple[schemas.PolicyApplyBody, list]:
    """The policy body and its verified consents (on a thread)."""
    body = validated_body(
        schemas.PolicyApplyBody, content_type, raw, schemas.PolicyApplyBody.max_json_values
    )
    # Up to 32 signature checks: on the thread too.
    return body, [
        auth.verify_consent(
            c.model_dump(),
            deployment=shared.cas().deployment_id,
            audiences=shared.app.state.audiences,
            now=when,
            certificates=shared.certificates,
        )
        for c in body.consents
    ]


# The body is read raw: its signature is checked before it is parsed (a
# body parameter would have FastAPI parse and validate it first, for
# anyone who forges well-formed signature headers), and it is parsed on a
# thread (a legitimate policy may be a MiB).  Documented as a body parameter.
@_route(
    "PUT",
    "/v1/policies",
    response_model=schemas.PolicyApplyResponse,
    tags=["policies"],
    openapi_extra=_json_body(schemas.PolicyApplyBody),
)
async def apply_policy(request: Request) -> schemas.PolicyApplyResponse:
    """Create or update a policy (signed by an owner; updates name their predecessor)."""
    shared = _shared(request)
    cas = shared.cas
    who = await shared.caller(request)
    # Before the body is decoded: a caller who may create no policy and owns
    # none is refused without its policy text being read (red team rt7).
    await run_in_threadpool(cas().check_may_apply, who)
    content_type, raw, when = (
        request.headers.get("content-type"),
        await request.body(),
        shared.now(),
    )
    body, consents = await run_in_threadpool(_decoded_apply, shared, content_type, raw, when)
    info = await run_in_threadpool(cas().apply_policy, who, body.policy, when, consents)
    return schemas.PolicyApplyResponse(
        name=info.name,
        version=info.version,
        policy_hash=info.policy_hash,
        created=info.created,
        generated_secrets=info.generated_secrets,
    )


policy_name = Path(pattern=schemas.NAME_PATTERN, description="policy name")


@_route("GET", "/v1/policies/{name}", response_model=schemas.PolicyResponse, tags=["policies"])
async def read_policy(request: Request, name: str = policy_name) -> schemas.PolicyResponse:
    """The policy document and secret metadata (owners and readers; never values)."""
    shared = _shared(request)
    who = await shared.caller(request)
    view = await run_in_threadpool(shared.cas().read_policy, who, name)
    return schemas.PolicyResponse(
        name=view.name,
        version=view.version,
        policy_hash=view.policy_hash,
        text=view.text,
        updated_at=view.updated_at,
        updated_by=view.updated_by,
        secrets=[schemas.SecretMetadata(**s) for s in view.secrets],
        ca_certificate=view.ca_certificate_pem,
    )


@_route("DELETE", "/v1/policies/{name}", status_code=204, tags=["policies"])
async def delete_policy(
    request: Request,
    name: str = policy_name,
    predecessor: str = Query(
        pattern="^[0-9a-f]{64}$", description="hash of the version being deleted"
    ),
) -> None:
    """Delete a policy and its secrets (owners; names the current hash)."""
    shared = _shared(request)
    who = await shared.caller(request)
    await run_in_threadpool(shared.cas().delete_policy, who, name, predecessor, shared.now())


@_route("GET", "/v1/audit", response_model=list[schemas.AuditEntryModel], tags=["audit"])
async def audit_entries(
    request: Request,
    response: Response,
    after: str = Query(
        "",
        max_length=64,
        description="ref of the last entry of the previous page (empty or 0: from the start)",
    ),
    limit: int = Query(100, ge=1, le=1000),
    ref: str | None = Query(None, max_length=64, description="just this entry"),
) -> list[schemas.AuditEntryModel]:
    """Audit entries about the policies the caller owns or reads with consent, oldest first.

    A page holds up to ``limit`` entries and about 1 MiB: when it stops
    short for its size, header ``X-Audit-More-After`` names its last ref
    (the ``after`` of the next page).
    """
    shared = _shared(request)
    who = await shared.caller(request)
    entries, more = await run_in_threadpool(
        lambda: shared.cas().owner_audit_page(who, after=after, limit=limit, ref=ref)
    )
    if more:
        response.headers[AUDIT_MORE_HEADER] = entries[-1].ref
    return [schemas.AuditEntryModel(**e.to_dict()) for e in entries]


@_route("GET", "/v1/audit/verify", response_model=schemas.AuditVerifyResponse, tags=["audit"])
async def audit_verify(request: Request) -> schemas.AuditVerifyResponse:
    """Whether the chain's new part and the caller's entries are intact (owners, readers).

    Checks what was appended since the last check (the position verified
    before stays in the service's memory) and, of the caller's older
    entries, the latest 1000 and the next 1000 of the caller's sweep (which
    goes on where its previous call stopped: every entry once per round of
    calls), with their successors' links; not the whole chain (that is
    ``sgxcloud audit verify``).  Entries of policies the caller reads count
    only if the caller consented to being a reader.  Says whether this call
    completed the caller's round and how many of the caller's entries it has
    left (``round``, ``round_complete``, ``round_left``); no position, and no
    count of anything but the caller's own entries.
    """
    shared = _shared(request)
    who = await shared.caller(request)
    check = await run_in_threadpool(shared.cas().verify_audit, who)
    return schemas.AuditVerifyResponse(
        ok=check.ok,
        problems=[{"problem": kind} for kind in check.problems],
        round=check.progress.round,
        round_complete=check.progress.complete,
        round_left=check.progress.left,
    )


def create_app(
    service: CasService | None,
    *,
    clock: Callable[[], float] = time.time,
    max_skew: int = 300,
    audiences: Iterable[str] = (),
    owner_certificates: auth.OwnerCertificates | None = None,
    limits: RequestLimits | None = None,
    max_attest_bytes: int = MAX_ATTEST_BODY_BYTES,
    max_policy_bytes: int = MAX_POLICY_BODY_BYTES,
    answer_key: Ed25519PrivateKey | None = None,
) -> FastAPI:
    """The ASGI application for ``service``; ``clock`` is injectable for tests.

    ``audiences`` are the origins (``https://host:port``) owners reach this
    service at: owners' signatures must name one of them.  More can be added
    once the port is known (``add_audience``).  With ``service=None`` the app
    only documents the API (``openapi_document``): every endpoint answers 503.
    Request bodies are bounded per route and owner requests' signature
    headers checked before any body is read (:mod:`sgxcloud.web.limits`);
    ``limits`` holds the bounds shared by all routes.  With ``answer_key``
    every answer to a signed owner request is signed (:mod:`sgxcloud.cas.answers`).
    """
    # DirectApp: the attestation's two requests skip FastAPI's generic stack.
    # FastAPI's own OpenTelemetry is off: the CAS's metrics are Prometheus
    # (metrics.py, on a listener of their own), nothing is exported elsewhere.
    app = DirectApp(
        telemetry=TELEMETRY_OFF,
        title="sgxcloud attestation and configuration service",
        version=API_VERSION,
        description=(
            "Enclaves prove what they are (DCAP quote, or SIMULATED evidence where a policy "
            "allows it) and receive their configuration sealed to their own key. Owners manage "
            "policies with signed requests. See docs/cas/protocol.md."
        ),
        responses=_ERRORS,
    )
    app.state.audiences = frozenset(auth.origin_of(a) for a in audiences)
    shared = _Cas(
        app,
        service,
        clock=clock,
        max_skew=max_skew,
        certificates=owner_certificates or auth.OwnerCertificates(),
    )
    app.state.cas = shared
    app.add_exception_handler(SgxcloudError, _typed_error)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(Exception, _bug)
    for method, path, endpoint, options in _ROUTES:
        if isinstance(endpoint, str):
            endpoint = getattr(shared, endpoint)
        app.router.add_api_route(path, endpoint, methods=[method], **options)
    limits = limits or RequestLimits()
    owner = r"/v1/policies/[^/]+"
    app.add_middleware(
        RequestLimitsMiddleware,
        limits=limits,
        routes=[
            RouteLimit("POST", "/v1/attest", max_attest_bytes),
            RouteLimit("PUT", "/v1/policies", max_policy_bytes, shared.signed),
            RouteLimit("GET", owner, limits.max_body_bytes, shared.signed),
            RouteLimit("DELETE", owner, limits.max_body_bytes, shared.signed),
            RouteLimit("GET", "/v1/audit(/verify)?", limits.max_body_bytes, shared.signed),
        ],
        render=_limit_error,
    )
    if answer_key is not None:
        # Outermost: the refusals of RequestLimitsMiddleware are signed too.
        app.add_middleware(SignedAnswersMiddleware, key=answer_key, deployment=shared.deployment)
    _document_400_not_422(app)
    return app


_OWNER_PATHS = re.compile(r"/v1/(policies(/[^/]+)?|audit(/verify)?)")


class SignedAnswersMiddleware:
    """Sign each answer to a signed owner request (red team rt10 F1).

    A request is a signed owner request when it is on an owner route and
    carries a request id and a request signature; its whole answer (status,
    :data:`answers.SIGNED_HEADERS`, body) is held, signed over
    :func:`answers.answer_payload` and sent with ``X-Sgxcloud-Answer-Signature``.
    Owner answers are bounded (an audit page is about 1 MiB at most), so
    holding one costs what sending it does.
    """

    def __init__(self, app: Any, *, key: Ed25519PrivateKey, deployment: Callable[[], str]) -> None:
        self.app = app
        self.key = key
        self.deployment = deployment

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _OWNER_PATHS.fullmatch(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        request_headers: dict[str, str] = {}
        for k, v in scope["headers"]:  # the first of each, as the handlers read them
            request_headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        request_id = request_headers.get(auth.REQUEST_ID_HEADER)
        if not request_id or not request_headers.get(auth.SIGNATURE_HEADER):
            await self.app(scope, receive, send)
            return
        start: dict | None = None
        chunks: list[bytes] = []
        # The body bytes the CAS read (rt11 F1): the answer binds them, so a request
        # altered on the way gets an answer its owner cannot verify.
        received = hashlib.sha256()

        async def read() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                received.update(message.get("body", b""))
            return message

        async def hold(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            assert start is not None
            body = b"".join(chunks)
            headers = [(k, v) for k, v in start.get("headers", [])]
            named = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
            query = scope.get("query_string", b"").decode("latin-1")
            path = signed_path(scope["path"], query)
            digest = answers.request_digest(
                scope["method"], path, request_headers, received.hexdigest()
            )
            payload = answers.answer_payload(
                deployment=self.deployment(),
                request_id=request_id,
                request_digest=digest,
                status=start["status"],
                headers=named,
                body=body,
            )
            signature = answers.sign_answer(self.key, payload)
            headers.append((answers.ANSWER_HEADER.encode(), signature.encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, read, hold)


def _document_400_not_422(app: FastAPI) -> None:
    """Make the OpenAPI document say what the API does: bad input is 400, never 422;
    bodies read raw (``_RAW_BODIES``) are in its components as body parameters are."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = generate()
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for model in _RAW_BODIES:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            document["components"]["schemas"] = dict(sorted(components.items()))
            app.openapi_schema = _document_answer_headers(drop_validation_422(document))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


ANSWER_SIGNATURE_DOC = {
    "description": "On answers to owner requests signed with X-Sgxcloud-Request-Id and "
    "X-Sgxcloud-Signature, when the CAS has an answer signing key: "
    "'sgxcloud-cas-answer-v2 <base64 Ed25519 signature>' over the request's id, the "
    "digest of the request as received (method, path, signed headers, body's SHA-256), "
    "status, X-Audit-More-After and the body's SHA-256 "
    "(docs/cas/protocol.md, Signed answers). Owners verify it against the pinned "
    "public key ('sgxcloud cas signing-key').",
    "schema": {"type": "string", "pattern": "^sgxcloud-cas-answer-v2 [A-Za-z0-9+/]+=*$"},
}
AUDIT_MORE_DOC = {
    "description": "When the page stopped short for its size: the ref of its last entry, "
    "the 'after' of the next page. Covered by the answer signature.",
    "schema": {"type": "string"},
}


def _document_answer_headers(document: dict) -> dict:
    """Every response of the owner routes (the paths SignedAnswersMiddleware signs) names
    the answer signature header; the audit pages name X-Audit-More-After too."""
    for path, operations in document.get("paths", {}).items():
        if not _OWNER_PATHS.fullmatch(re.sub(r"\{[^}/]+\}", "x", path)):
            continue
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                headers["X-Sgxcloud-Answer-Signature"] = ANSWER_SIGNATURE_DOC
                if path == "/v1/audit" and status.startswith("2"):
                    headers[AUDIT_MORE_HEADER] = AUDIT_MORE_DOC
    return document


def add_audience(app: FastAPI, url: str) -> None:
    """Accept owners' signatures made for ``url``'s origin too."""
    app.state.audiences = app.state.audiences | {auth.origin_of(url)}


def openapi_document() -> dict:
    """The OpenAPI document (committed as docs/cas/openapi.json)."""
    return create_app(None).openapi()


def _error_response(exc: SgxcloudError) -> JSONResponse:
    status, label = 400, "bad-request"  # any other deliberate error is about the input
    for cls, code, name in STATUS:
        if isinstance(exc, cls):
            status, label = code, name
            break
    if isinstance(exc, AttestationRejected):
        # The caller is an unauthenticated enclave (or anyone): the reasons
        # would say whether a policy exists and what it accepts.  They go to
        # the audit entry, which the policy's owners read.
        body = schemas.ErrorBody(
            error=label,
            message=f"attestation rejected; the policy's owners can read why "
            f"in audit entry {exc.audit_ref}",
            code=REJECTED_CODE,
            audit_ref=exc.audit_ref,
        )
        return JSONResponse(body.model_dump(exclude_none=True), status_code=status)
    body = schemas.ErrorBody(error=label, message=str(exc))
    if status == 500:
        body.message = "internal error"
        log.error("service error: %s", type(exc).__name__)
    if isinstance(exc, PolicyError):
        body.field = exc.field
        body.problems = [{"field": p.field, "message": p.message} for p in exc.problems]
    if isinstance(exc, EvidenceError):
        body.code = exc.code
    if isinstance(exc, MalformedAttestation):
        body.audit_ref = exc.audit_ref
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)
