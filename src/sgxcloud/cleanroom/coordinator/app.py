"""The coordinator's HTTP API (FastAPI): decode, call :class:`Coordinator`, encode."""

from __future__ import annotations

import logging
from typing import Any

# Request at module level: FastAPI resolves the handlers' string annotations here.
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from sgxcloud.cleanroom.coordinator import schemas
from sgxcloud.cleanroom.coordinator.service import Coordinator
from sgxcloud.cleanroom.errors import CleanroomError, QueryError, QueryRefused
from sgxcloud.cleanroom.transport.request_auth import RequestRejected
from sgxcloud.errors import InputError
from sgxcloud.web.limits import KIB, RequestLimits, RequestLimitsMiddleware, RouteLimit, load_json

log = logging.getLogger("sgxcloud.cleanroom.coordinator")  # one name for the package's log

API_VERSION = "1.0"

MAX_QUERY_BODY_BYTES = 64 * KIB
"""Default body limit of POST /v1/queries (a query document is a few hundred bytes)."""
MAX_QUERY_DEPTH = 32
"""Deepest JSON nesting a query document may have."""
MAX_QUERY_VALUES = 4096
"""Most JSON values and keys a query (or ingest) body may hold, checked before parsing."""


def create_app(coordinator: Coordinator | None = None, *, limits: RequestLimits | None = None,
               max_query_bytes: int = MAX_QUERY_BODY_BYTES):
    """The coordinator's HTTP API (FastAPI).  Handlers decode, call, encode.

    ``coordinator`` may be None to render the OpenAPI document only.  Bodies
    are bounded per route and signature headers checked before any body is
    read (:mod:`sgxcloud.web.limits`, the CAS's mechanism too).
    """
    app = FastAPI(
        title="sgxcloud clean room coordinator",
        version=API_VERSION,
        description=(
            "HTTP API of the clean room coordinator enclave. Attestation and the "
            "definition are public; every other call is signed by a party's Ed25519 "
            "key (X-Cleanroom-Party, -Nonce, -Issued-At, -Definition, -Coordinator, -Signature "
            "headers; sgxcloud.cleanroom.request/v2, naming this collaboration's definition "
            "hash and this coordinator's attested result signer). "
            "Results are signed by the enclave's key, which its attestation binds."
        ),
    )
    app.state.coordinator = coordinator

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    errors = {r: {"model": schemas.ErrorResponse} for r in (400, 401, 403, 404, 408, 413, 500)}

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        """Outside the guarded handlers too: never a 500 without a JSON body."""
        log.error("internal error: %s", type(exc).__name__, exc_info=exc)
        return error(500, "internal_error", "internal error in the coordinator; its operator "
                     "has the details in the coordinator's log")

    async def authenticate(request: Request) -> str:
        body = await request.body()
        return app.state.coordinator.requests.verify(
            {k.lower(): v for k, v in request.headers.items()},
            request.method, request.url.path, body)

    def guarded(handler):
        """Map library verdicts to HTTP statuses; nothing else leaks out."""
        import functools

        @functools.wraps(handler)
        async def wrapper(*args, **kwargs):
            try:
                return await handler(*args, **kwargs)
            except RequestRejected as exc:
                return error(401, "unauthenticated", str(exc))
            except QueryRefused as exc:
                return error(403, f"refused_{exc.reason}", str(exc))
            except (QueryError, InputError) as exc:
                return error(400, "bad_request", str(exc))
            except CleanroomError as exc:
                return error(400, "error", str(exc))
            except Exception:
                # A bug (an engine or DuckDB error): the caller still gets JSON with
                # a stable code; details go to the operator's log only.
                log.exception("internal error in %s", handler.__name__)
                return error(500, "internal_error",
                             "internal error in the coordinator; its operator has the details "
                             "in the coordinator's log")
        return wrapper

    @app.get("/v1/health", tags=["public"])
    async def health() -> dict[str, Any]:
        """Liveness, whether this coordinator runs on SIMULATED attestation, and what
        signed requests must name (definition hash, coordinator); a client signs for
        the coordinator its attestation proved, not for what this unattested answer says."""
        c = app.state.coordinator
        return {"status": "ok", "simulated": c.simulated, "definition_hash": c.definition_hash,
                "coordinator": c.signer}

    @app.get("/v1/attestation", tags=["public"], responses=errors)
    async def attestation(nonce: str = Query(..., pattern="^[0-9a-f]{64}$",
                                             description="32 random bytes, hex")):
        """Fresh evidence binding the HTTPS key, the result signer, the definition
        hash and ``nonce``; check it before trusting anything else."""
        return app.state.coordinator.attestation(bytes.fromhex(nonce))

    @app.get("/v1/definition", tags=["public"])
    async def definition() -> dict[str, Any]:
        """The collaboration definition this coordinator runs, and its hash."""
        c = app.state.coordinator
        return {"definition_hash": c.definition_hash, "document": c.definition.document}

    @app.get("/v1/status", tags=["parties"], responses=errors)
    @guarded
    async def status(request: Request):
        """Approvals and the ingestion state of every dataset: in full (rows,
        identifier report, reasons) for the signing provider's own datasets; by
        name, state and ingestion time only for everyone else's."""
        party = await authenticate(request)
        c = app.state.coordinator
        return {"simulated": c.simulated, "definition_hash": c.definition_hash,
                "approvals": c.approval_status(), "datasets": c.status_for(party)}

    @app.post("/v1/ingest", tags=["providers"], responses=errors)
    @guarded
    async def ingest(request: Request):
        """A data provider asks the coordinator to pull its datasets again (after
        fixing or refreshing a file): all of them, or those named in an optional
        body ``{"datasets": ["customers"]}``; answers with their new state.  A
        rejected pull leaves the previous data in use."""
        party = await authenticate(request)
        c = app.state.coordinator
        if party not in c.config.nodes:
            return error(403, "not_allowed", f"{party} runs no node known to this coordinator")
        body = await request.body()
        names = None
        if body.strip():
            try:
                names = load_json(body, max_depth=MAX_QUERY_DEPTH,
                                  max_values=MAX_QUERY_VALUES).get("datasets")
            except (InputError, AttributeError):
                names = "bad"
            if names is not None and (not isinstance(names, list)
                                      or not all(isinstance(n, str) for n in names)):
                return error(400, "bad_request",
                             'body must be {"datasets": ["NAME", ...]} or empty')
        await run_in_threadpool(c.ingest_provider, party, None, names)
        mine = [v for v in c.status_for(party) if v["provider"] == party]
        return {"datasets": mine}

    @app.post("/v1/queries", tags=["analysts"], responses=errors)
    @guarded
    async def submit_query(request: Request):
        """Run a query as the signing analyst; returns the signed result bundle."""
        analyst = await authenticate(request)
        try:
            doc = load_json(await request.body(), max_depth=MAX_QUERY_DEPTH,
                            max_values=MAX_QUERY_VALUES)
        except InputError as exc:
            return error(400, "bad_request", f"body must be a JSON query document ({exc})")
        c = app.state.coordinator
        result = await run_in_threadpool(c.run_query, doc, analyst)
        bundle = c.bundle(result)
        await run_in_threadpool(c.keep_result, bundle, analyst)
        return bundle

    @app.get("/v1/results/{result_id}", tags=["recipients"], responses=errors)
    @guarded
    async def get_result(result_id: str, request: Request):
        """A released result, for the analyst who asked or a listed recipient."""
        party = await authenticate(request)
        entry = await run_in_threadpool(app.state.coordinator.kept_result, result_id)
        if entry is None:
            return error(404, "not_found", "no such result")
        recipients = entry["bundle"]["result"].get("recipients", [])
        if party != entry["analyst"] and party not in recipients:
            return error(403, "not_allowed", f"{party} is not a recipient of this result")
        return entry["bundle"]

    @app.get("/v1/budget", tags=["analysts"], responses=errors)
    @guarded
    async def budget(request: Request):
        """The signing analyst's differential-privacy budget."""
        analyst = await authenticate(request)
        return await run_in_threadpool(app.state.coordinator.budget, analyst)

    @app.get("/v1/audit", tags=["parties"], responses=errors)
    @guarded
    async def audit(request: Request):
        """The hash-chained audit log: every request, verdict and result digest
        (released figures reach only the result's recipients)."""
        await authenticate(request)
        return {"entries": await run_in_threadpool(app.state.coordinator.audit_entries)}

    def signed(_scope, headers) -> None:
        app.state.coordinator.requests.check_headers(headers)

    limits = limits or RequestLimits()
    small = limits.max_body_bytes
    app.add_middleware(
        RequestLimitsMiddleware, limits=limits, render=_limit_error,
        routes=[RouteLimit("POST", "/v1/queries", max_query_bytes, signed),
                RouteLimit("POST", "/v1/ingest", small, signed),
                *(RouteLimit("GET", path, small, signed)
                  for path in ("/v1/status", "/v1/results/[^/]+", "/v1/budget", "/v1/audit"))])
    return app


_LIMIT_CODES = {400: "bad_request", 401: "unauthenticated", 408: "timeout", 413: "too_large"}


def _limit_error(status: int, message: str) -> dict[str, Any]:
    """Refusals made before a handler runs, in the API's error shape."""
    return {"error": {"code": _LIMIT_CODES.get(status, "bad_request"), "message": message}}


def openapi_document() -> dict[str, Any]:
    """The API description committed as docs/cleanroom/openapi.json."""
    return create_app(None).openapi()
