"""The coordinator's HTTP API: decode, call :class:`Coordinator`, encode.  Nothing else lives here.

Calls that take the engine's lock (queries, ingestion, budget, audit) and
reads of kept results run in the shared thread pool; request signatures,
status and attestation are answered on the event loop.  Bodies are bounded
per route and signature headers checked before any body is read
(:mod:`sgxcloud.web.limits`, the CAS's mechanism too).

Library verdicts become statuses in one table (``STATUS``); any other
exception is a bug and answers 500 ``internal_error``, its details in the
coordinator's log only.  Every error answer is ``{"error": {"code",
"message"}}`` (:class:`schemas.ErrorResponse`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from sgxcloud.cleanroom.audit import AUDIT_MORE_HEADER, PAGE_ENTRIES
from sgxcloud.cleanroom.coordinator import schemas
from sgxcloud.cleanroom.coordinator.service import Coordinator
from sgxcloud.cleanroom.errors import CleanroomError, QueryRefused
from sgxcloud.cleanroom.transport.errors import NonceStoreError, RequestRejected
from sgxcloud.errors import InputError
from sgxcloud.signed_requests import signed_path
from sgxcloud.web.limits import KIB, RequestLimits, RequestLimitsMiddleware, RouteLimit, load_json
from sgxcloud.web.openapi import document_400_not_422, first_problem

log = logging.getLogger("sgxcloud.cleanroom.coordinator")  # one name for the package's log

API_VERSION = "1.0"
DESCRIPTION = (
    "HTTP API of the clean room coordinator enclave. Attestation and the "
    "definition are public; every other call is signed by a party's Ed25519 "
    "key (X-Cleanroom-Party, -Nonce, -Issued-At, -Definition, -Coordinator, -Signature "
    "headers; sgxcloud.cleanroom.request/v2, naming this collaboration's definition "
    "hash and this coordinator's attested result signer). "
    "Results are signed by the enclave's key, which its attestation binds."
)

MAX_QUERY_BODY_BYTES = 64 * KIB
"""Default body limit of POST /v1/queries (a query document is a few hundred bytes)."""
MAX_QUERY_DEPTH = 32
"""Deepest JSON nesting a query document may have."""
MAX_QUERY_VALUES = 4096
"""Most JSON values and keys a query (or ingest) body may hold, checked before parsing."""

# Most specific first: (error class, HTTP status, error code).  A refused
# query's code also names the reason: refused_suppressed, refused_budget...
STATUS: list[tuple[type[Exception], int, str]] = [
    (RequestRejected, 401, "unauthenticated"),
    # The record of used nonces cannot be written: no signed request can be
    # accepted until it can, so "retry later", as the CAS answers for its database.
    (NonceStoreError, 503, "unavailable"),
    (QueryRefused, 403, "refused"),
    (InputError, 400, "bad_request"),  # QueryError among them
    (CleanroomError, 400, "error"),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorResponse} for status in (400, 401, 403, 404, 408, 413, 500, 503)
}

# Error codes of the refusals made before a request reaches a handler.
_LIMIT_CODES = {400: "bad_request", 401: "unauthenticated", 408: "timeout", 413: "too_large"}

INTERNAL_ERROR_MESSAGE = (
    "internal error in the coordinator; its operator has the details in the coordinator's log"
)
INGEST_BODY_HINT = 'body must be {"datasets": ["NAME", ...]} or empty'


def _error_body(code: str, message: str) -> dict[str, Any]:
    """The API's one error shape (``schemas.ErrorResponse``)."""
    return schemas.ErrorResponse(error=schemas.ErrorBody(code=code, message=message)).model_dump()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(_error_body(code, message), status_code=status)


def _limit_error(status: int, message: str) -> dict[str, Any]:
    """Refusals made before a handler runs, in the API's error shape."""
    return _error_body(_LIMIT_CODES.get(status, "bad_request"), message)


def _verdict(exc: Exception) -> JSONResponse | None:
    """The answer ``STATUS`` gives ``exc``; None for an error it does not know (a bug)."""
    for cls, status, code in STATUS:
        if isinstance(exc, cls):
            if isinstance(exc, QueryRefused):
                code = f"{code}_{exc.reason}"
            return _error(status, code, str(exc))
    return None


Handler = Callable[..., Awaitable[Any]]


def guarded(handler: Handler) -> Handler:
    """Map library verdicts to HTTP statuses; nothing else leaks out."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except Exception as exc:
            answer = _verdict(exc)
            if answer is None:
                # A bug (an engine or DuckDB error): the caller still gets JSON with
                # a stable code; details go to the operator's log only.
                log.exception("internal error in %s", handler.__name__)
                answer = _error(500, "internal_error", INTERNAL_ERROR_MESSAGE)
            return answer

    return wrapper


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    """Outside the guarded handlers too: never a 500 without a JSON body."""
    log.error("internal error: %s", type(exc).__name__, exc_info=exc)
    return _error(500, "internal_error", INTERNAL_ERROR_MESSAGE)


async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """A parameter FastAPI checked (e.g. the attestation's nonce): 400 in the API's
    shape, not FastAPI's 422 ``{"detail": [...]}``; the value sent is not echoed."""
    where, what = first_problem(exc)
    return _error(400, "bad_request", f"{where}: {what}" if where else what)


def _coordinator(request: Request) -> Coordinator:
    return request.app.state.coordinator


async def _authenticate(request: Request) -> str:
    """The party that signed ``request`` (RequestRejected if none did)."""
    body = await request.body()
    return _coordinator(request).requests.verify(
        {k.lower(): v for k, v in request.headers.items()},
        request.method,
        signed_path(request.url.path, request.url.query),
        body,
    )


def _query_document(body: bytes) -> Any:
    try:
        return load_json(body, max_depth=MAX_QUERY_DEPTH, max_values=MAX_QUERY_VALUES)
    except InputError as exc:
        raise InputError(f"body must be a JSON query document ({exc})") from exc


def _dataset_names(body: bytes) -> list[str] | None:
    """The datasets an ingest body names; None (all of them) for an empty body."""
    if not body.strip():
        return None
    try:
        names = load_json(body, max_depth=MAX_QUERY_DEPTH, max_values=MAX_QUERY_VALUES).get(
            "datasets"
        )
    except (InputError, AttributeError):
        raise InputError(INGEST_BODY_HINT) from None
    if names is not None and (
        not isinstance(names, list) or not all(isinstance(n, str) for n in names)
    ):
        raise InputError(INGEST_BODY_HINT)
    return names


Endpoint = TypeVar("Endpoint", bound=Handler)
_ROUTES: list[tuple[str, str, Handler, dict[str, Any]]] = []
"""The API's routes in the order they are served and documented (``create_app``)."""


def _route(method: str, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """Declare an endpoint of the API, as ``app.get``/``app.post`` would.

    ``create_app`` adds them to each app as its own routes: a module-level
    ``APIRouter`` would need ``include_router``, which FastAPI (0.165) serves
    through a further matching layer on every request.
    """

    def register(endpoint: Endpoint) -> Endpoint:
        _ROUTES.append((method, path, endpoint, options))
        return endpoint

    return register


@_route("GET", "/v1/health", tags=["public"])
async def health(request: Request) -> dict[str, Any]:
    """Liveness, whether this coordinator runs on SIMULATED attestation, and what
    signed requests must name (definition hash, coordinator); a client signs for
    the coordinator its attestation proved, not for what this unattested answer says."""
    c = _coordinator(request)
    return {
        "status": "ok",
        "simulated": c.simulated,
        "definition_hash": c.definition_hash,
        "coordinator": c.signer,
    }


@_route("GET", "/v1/attestation", tags=["public"], responses=_ERRORS)
async def attestation(
    request: Request,
    nonce: str = Query(..., pattern="^[0-9a-f]{64}$", description="32 random bytes, hex"),
):
    """Fresh evidence binding the HTTPS key, the result signer, the definition
    hash and ``nonce``; check it before trusting anything else."""
    return _coordinator(request).attestation(bytes.fromhex(nonce))


@_route("GET", "/v1/definition", tags=["public"])
async def definition(request: Request) -> dict[str, Any]:
    """The collaboration definition this coordinator runs, and its hash."""
    c = _coordinator(request)
    return {"definition_hash": c.definition_hash, "document": c.definition.document}


@_route("GET", "/v1/status", tags=["parties"], responses=_ERRORS)
@guarded
async def status(request: Request):
    """Approvals and the ingestion state of every dataset: in full (rows,
    identifier report, reasons) for the signing provider's own datasets; by
    name, state and ingestion time only for everyone else's."""
    party = await _authenticate(request)
    c = _coordinator(request)
    return {
        "simulated": c.simulated,
        "definition_hash": c.definition_hash,
        "approvals": c.approval_status(),
        "datasets": c.status_for(party),
        "dp_budget": await run_in_threadpool(c.collaboration_budget),
    }


@_route("POST", "/v1/ingest", tags=["providers"], responses=_ERRORS)
@guarded
async def ingest(request: Request):
    """A data provider asks the coordinator to pull its datasets again (after
    fixing or refreshing a file): all of them, or those named in an optional
    body ``{"datasets": ["customers"]}``; answers with their new state.  A
    rejected pull leaves the previous data in use."""
    party = await _authenticate(request)
    c = _coordinator(request)
    if party not in c.config.nodes:
        return _error(403, "not_allowed", f"{party} runs no node known to this coordinator")
    names = _dataset_names(await request.body())
    await run_in_threadpool(c.ingest_provider, party, None, names)
    return {"datasets": [v for v in c.status_for(party) if v["provider"] == party]}


@_route("POST", "/v1/queries", tags=["analysts"], responses=_ERRORS)
@guarded
async def submit_query(request: Request):
    """Run a query as the signing analyst; returns the signed result bundle."""
    analyst = await _authenticate(request)
    doc = _query_document(await request.body())
    c = _coordinator(request)
    result = await run_in_threadpool(c.run_query, doc, analyst)
    bundle = c.bundle(result)
    await run_in_threadpool(c.keep_result, bundle, analyst)
    return bundle


@_route("GET", "/v1/results/{result_id}", tags=["recipients"], responses=_ERRORS)
@guarded
async def get_result(result_id: str, request: Request):
    """A released result, for the analyst who asked or a listed recipient."""
    party = await _authenticate(request)
    entry = await run_in_threadpool(_coordinator(request).kept_result, result_id)
    if entry is None:
        return _error(404, "not_found", "no such result")
    recipients = entry["bundle"]["result"].get("recipients", [])
    if party != entry["analyst"] and party not in recipients:
        return _error(403, "not_allowed", f"{party} is not a recipient of this result")
    return entry["bundle"]


@_route("GET", "/v1/budget", tags=["analysts"], responses=_ERRORS)
@guarded
async def budget(request: Request):
    """The signing analyst's differential-privacy budget."""
    analyst = await _authenticate(request)
    return await run_in_threadpool(_coordinator(request).budget, analyst)


@_route(
    "GET",
    "/v1/audit",
    tags=["parties"],
    responses={
        **_ERRORS,
        200: {
            "headers": {
                AUDIT_MORE_HEADER: {
                    "description": "on a page with entries after it: the seq of its last "
                    "entry (the next page's 'after')",
                    "schema": {"type": "string"},
                }
            }
        },
    },
)
@guarded
async def audit(
    request: Request,
    after: int = Query(
        0, ge=0, description="the seq of the last entry already read (0: from the first)"
    ),
    limit: int = Query(PAGE_ENTRIES, ge=1, le=PAGE_ENTRIES, description="most entries"),
):
    """The hash-chained audit log: every request, verdict and result digest
    (released figures reach only the result's recipients), a page at a time.

    A page holds entries ``after + 1`` onwards, oldest first: up to ``limit`` of
    them and about 1 MiB (always at least one entry).  When entries follow it, the
    header ``X-Audit-More-After`` names the seq of its last entry, the ``after`` of
    the next page; a page without it is the last.  Check the chain across pages:
    each page's first entry follows the previous page's last."""
    await _authenticate(request)
    body, count, more = await run_in_threadpool(_coordinator(request).audit_page_json, after, limit)
    # entries are counted in file order: the last one's seq, in an intact log
    headers = {AUDIT_MORE_HEADER: str(after + count)} if more else None
    return Response(body, media_type="application/json", headers=headers)


_SIGNED_READS = ("/v1/status", "/v1/results/[^/]+", "/v1/budget", "/v1/audit")


def create_app(
    coordinator: Coordinator | None = None,
    *,
    limits: RequestLimits | None = None,
    max_query_bytes: int = MAX_QUERY_BODY_BYTES,
) -> FastAPI:
    """The coordinator's HTTP API (FastAPI) over ``coordinator``.

    ``coordinator`` may be None to render the OpenAPI document only.
    ``limits`` holds the bounds shared by all routes; ``max_query_bytes``
    bounds a query's body.
    """
    app = FastAPI(
        title="sgxcloud clean room coordinator", version=API_VERSION, description=DESCRIPTION
    )
    app.state.coordinator = coordinator
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(Exception, _unexpected)
    document_400_not_422(app)
    for method, path, endpoint, options in _ROUTES:
        app.add_api_route(path, endpoint, methods=[method], **options)

    def signed(_scope, headers) -> None:
        app.state.coordinator.requests.check_headers(headers)

    limits = limits or RequestLimits()
    small = limits.max_body_bytes
    app.add_middleware(
        RequestLimitsMiddleware,
        limits=limits,
        render=_limit_error,
        routes=[
            RouteLimit("POST", "/v1/queries", max_query_bytes, signed),
            RouteLimit("POST", "/v1/ingest", small, signed),
            *(RouteLimit("GET", path, small, signed) for path in _SIGNED_READS),
        ],
    )
    return app


def openapi_document() -> dict[str, Any]:
    """The API description committed as docs/cleanroom/openapi.json."""
    return create_app(None).openapi()
