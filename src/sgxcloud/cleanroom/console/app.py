"""The console's pages (Starlette).  Handlers decode the request, call the
party session, render a template; nothing here talks to the coordinator
except through :class:`~.session.PartySession` and so the SDK.

Every POST goes through :func:`_posted`, which refuses it without this
start's CSRF token; tests enumerate the routes to make sure none slips by.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sgxcloud.cleanroom.console import builder, charts, exports, views
from sgxcloud.cleanroom.console.security import Guard, GuardMiddleware
from sgxcloud.cleanroom.console.session import CoordinatorUnavailable, PartySession
from sgxcloud.cleanroom.errors import CleanroomError, QueryError, QueryRefused
from sgxcloud.cleanroom.sdk import VerifiedResult
from sgxcloud.cleanroom.transport.errors import RequestRejected
from sgxcloud.errors import SgxcloudError

HERE = Path(__file__).parent
RESULT_ID = re.compile(r"^[0-9a-f-]{1,64}$")
AUDIT_PAGE = 50
MAX_UPLOAD_BYTES = 4 << 20

REFUSAL_HELP = {
    "not_allowed": "The definition does not allow this for your party.",
    "budget": "Your differential-privacy budget cannot pay for this query.",
    "collaboration_budget": (
        "The collaboration's differential-privacy budget, shared by every analyst, "
        "is spent: no new question can be answered."
    ),
    "differencing": "Together with an earlier answer this would single out a small group.",
    "suppressed": "Every figure would describe fewer people than the minimum group size (k).",
}

Handler = Callable[..., Awaitable[Response]]


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["cell"] = views.cell_text
    env.filters["filter_text"] = views.filter_text
    env.filters["when"] = views.when
    env.filters["short"] = lambda text, n=16: (
        (str(text)[:n] + "…") if len(str(text)) > n else str(text)
    )
    return env


@dataclass(frozen=True)
class _Console:
    """What every handler needs, kept on the app (handlers are module-level
    functions, as the coordinator's: each can be read and tested alone)."""

    session: PartySession
    guard: Guard
    env: Environment
    recipients: Mapping[str, tuple[str, ...]]  # analysis -> who may read its results


def create_app(session: PartySession, guard: Guard) -> Starlette:
    """The console for ``session``'s party; every request passes ``guard`` first."""
    definition = session.definition
    recipients = {a.name: tuple(a.recipients) for a in definition.analyses}
    app = Starlette(routes=ROUTES)
    app.state.session = session
    app.state.console = _Console(session, guard, _environment(), recipients)
    return GuardMiddleware(app, guard)  # type: ignore[return-value]


def _console(request: Request) -> _Console:
    return request.app.state.console


def _render(request: Request, template: str, code: int = 200, **context: Any) -> Response:
    """``template`` with what every page shows (party, roles, collaboration, CSRF token)."""
    console = _console(request)
    session = console.session
    definition = session.definition
    member = definition.party(session.party)
    page = console.env.get_template(template).render(
        party=session.party,
        display_name=member.display_name if member else "",
        roles=session.roles,
        is_provider=session.is_provider,
        analyses=builder.offers(definition, session.party),
        collaboration=definition.name,
        definition_hash=session.definition_hash,
        simulated=session.simulated,
        csrf=console.guard.csrf,
        path=request.url.path,
        **context,
    )
    return HTMLResponse(page, status_code=code)


def _message(request: Request, code: int, title: str, message: str) -> Response:
    """A page that only says why (a refusal, something missing)."""
    return _render(request, "message.html", code, title=title, message=message)


async def _ask(call: Callable[[], Any]) -> tuple[Any, str | None]:
    """(answer, None) or (None, why the coordinator could not answer): pages
    that only show the coordinator's state still render when it is away."""
    try:
        return await run_in_threadpool(call), None
    except CoordinatorUnavailable as exc:
        return None, f"coordinator unavailable: {exc}"
    except RequestRejected as exc:
        return None, f"the coordinator refused our signed request: {exc}"
    except SgxcloudError as exc:
        return None, str(exc)


def _posted(handler: Handler) -> Handler:
    """Hand ``handler`` the form of a POST that carries this start's CSRF token;
    refuse any other (and any larger than the console takes) before reading it."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_UPLOAD_BYTES:
            return _message(
                request, 413, "Too large", "The submitted form is larger than this console takes."
            )
        form = await request.form(max_files=1, max_fields=500)
        if not _console(request).guard.csrf_ok(str(form.get("csrf", ""))):
            return _message(
                request,
                403,
                "Refused",
                "This form is not from this console's current start "
                "(missing or stale CSRF token). Reload the page.",
            )
        return await handler(request, form)

    wrapper.csrf_protected = True  # type: ignore[attr-defined]
    return wrapper


# -- overview, definition, approval, ingestion ------------------------------------------------


async def overview(request: Request) -> Response:
    session = _console(request).session
    definition = session.definition
    status, problem = await _ask(session.status)
    budget = None
    if status and any(session.party in a.analysts for a in definition.analyses):
        budget, _ = await _ask(session.budget)
    return _render(
        request,
        "overview.html",
        status=status,
        problem=problem,
        budget=budget,
        my_datasets=_identifier_reports(status, session.party),
        definition=definition,
        approval=session.approval,
        approval_out=session.approval_out,
    )


def _identifier_reports(status: Mapping[str, Any] | None, party: str) -> list[Mapping[str, Any]]:
    """The party's own datasets that came with an identifier report (providers)."""
    return [
        d
        for d in (status or {}).get("datasets", [])
        if d.get("dataset", "").startswith(party + ".") and d.get("identifier_report")
    ]


async def definition_page(request: Request) -> Response:
    definition = _console(request).session.definition
    return _render(request, "definition.html", definition=definition, document=definition.document)


@_posted
async def approve(request: Request, form: FormData) -> Response:
    session = _console(request).session
    if form.get("definition_hash") != session.definition_hash:
        return _message(
            request,
            400,
            "Not approved",
            "Tick the box that names the definition hash you reviewed.",
        )
    try:
        approval = await run_in_threadpool(session.approve)
    except CleanroomError as exc:
        return _message(request, 400, "Not approved", str(exc))
    return _render(request, "approved.html", approval=approval, approval_out=session.approval_out)


async def approval_download(request: Request) -> Response:
    session = _console(request).session
    if session.approval is None:
        return _message(
            request, 404, "No approval", "No approval was signed since this console started."
        )
    body = json.dumps(session.approval.to_dict(), indent=2) + "\n"
    return _download(body, f"approval-{session.party}.json", "application/json")


@_posted
async def ingest(request: Request, form: FormData) -> Response:
    session = _console(request).session
    if not session.is_provider:
        return _message(
            request,
            403,
            "Not a data provider",
            "Only data providers have datasets to pull again.",
        )
    answer, problem = await _ask(session.reingest)
    return _render(request, "ingested.html", answer=answer, problem=problem)


# -- queries ----------------------------------------------------------------------------------


async def query_index(request: Request) -> Response:
    return _render(request, "query_index.html")


def _offer(request: Request) -> builder.AnalysisOffer | None:
    session = _console(request).session
    return builder.offer_for(session.definition, session.party, request.path_params["name"])


def _no_such_analysis(request: Request) -> Response:
    return _message(request, 404, "No such analysis", "You may not run an analysis of that name.")


async def query_form(request: Request) -> Response:
    offer = _offer(request)
    if offer is None:
        return _no_such_analysis(request)
    return _render(request, "query_form.html", offer=offer, form=builder.Form([]))


@_posted
async def query_run(request: Request, form: FormData) -> Response:
    offer = _offer(request)
    if offer is None:
        return _no_such_analysis(request)
    fields = builder.Form([(k, str(v)) for k, v in form.multi_items()])
    try:
        doc = builder.build_query(offer, fields)
    except QueryError as exc:
        error = {"title": "The query is not valid", "message": str(exc)}
        return _render(request, "query_form.html", 400, offer=offer, form=fields, error=error)
    try:
        verified = await run_in_threadpool(_console(request).session.query, doc)
    except SgxcloudError as exc:
        code, error = _query_failure(exc)
        return _render(request, "query_form.html", code, offer=offer, form=fields, error=error)
    return RedirectResponse(f"/results/{verified.result.result_id}", status_code=303)


def _query_failure(exc: SgxcloudError) -> tuple[int, dict[str, Any]]:
    """The status and the form's error box for a query that got no result:
    refused by the privacy rules (409, with the reason's help), found invalid
    by the coordinator (400), or not answered at all (502)."""
    if isinstance(exc, QueryRefused):
        return 409, {
            "title": f"Refused: {exc.reason.replace('_', ' ')}",
            "message": exc.message,
            "help": REFUSAL_HELP.get(exc.reason),
            "reason": exc.reason,
        }
    if isinstance(exc, QueryError):
        return 400, {"title": "The coordinator found the query invalid", "message": str(exc)}
    return 502, {"title": "No answer", "message": str(exc)}


# -- results ----------------------------------------------------------------------------------


async def results(request: Request) -> Response:
    console = _console(request)
    session = console.session
    audit, problem = await _ask(session.audit)
    released = (
        views.visible_releases(list(audit.entries), session.party, console.recipients)
        if audit
        else []
    )
    return _render(
        request, "results.html", kept=session.kept_results(), released=released, problem=problem
    )


def _not_a_result_id(request: Request) -> Response:
    return _message(request, 404, "No such result", "That is not a result id.")


async def _result(request: Request) -> tuple[VerifiedResult | None, Response | None]:
    """(the verified result the path names, None) or (None, the page saying why not)."""
    result_id = request.path_params["result_id"]
    if not RESULT_ID.match(result_id):
        return None, _not_a_result_id(request)
    session = _console(request).session
    verified, problem = await _ask(lambda: session.result(result_id))
    if verified is None:
        return None, _message(request, 404, "Result not available", problem or "")
    return verified, None


async def result_page(
    request: Request, reverified: bool = False, verify_problem: str | None = None
) -> Response:
    verified, failure = await _result(request)
    if failure:
        return failure
    result = verified.result
    dims, rows = views.cell_rows(result)
    lift = views.lift_rows(result) if result.template == "campaign_lift" else []
    return _render(
        request,
        "result.html",
        verified=verified,
        result=result,
        charts=charts.charts_for(result),
        dims=dims,
        rows=rows,
        lift=lift,
        page_rows=views.PAGE_ROWS,
        privacy=views.flatten(result.privacy),
        reverified=reverified,
        verify_problem=verify_problem,
        people=_audience(result),
    )


async def result_verify(request: Request) -> Response:
    result_id = request.path_params["result_id"]
    if not RESULT_ID.match(result_id):
        return _not_a_result_id(request)
    try:
        await run_in_threadpool(_console(request).session.reverify, result_id)
    except SgxcloudError as exc:  # CleanroomError among them
        return await result_page(request, reverified=False, verify_problem=str(exc))
    return await result_page(request, reverified=True)


async def result_export(request: Request) -> Response:
    verified, failure = await _result(request)
    if failure:
        return failure
    result = verified.result
    fmt = request.path_params["fmt"]
    stem = exports.file_stem(result)
    if fmt == "csv":
        return _download(exports.result_csv(result), f"{stem}.csv", "text/csv")
    if fmt == "json":
        return _download(exports.bundle_json(verified), f"{stem}.json", "application/json")
    if fmt == "html" and result.template == "campaign_lift":
        from sgxcloud.cleanroom.report import lift_report_html

        page = await run_in_threadpool(lift_report_html, result, simulated=verified.simulated)
        return _download(page, f"{stem}.html", "text/html")
    return _message(
        request, 404, "No such export", "Exports are CSV, JSON, and HTML for campaign lift."
    )


async def verify_form(request: Request) -> Response:
    return _render(request, "verify.html", outcome=None)


@_posted
async def verify_upload(request: Request, form: FormData) -> Response:
    text = await _uploaded_text(form.get("bundle"))
    if text is None:
        outcome = {"valid": False, "reason": "not a result bundle (not UTF-8 text)"}
        return _render(request, "verify.html", 400, outcome=outcome)
    text = text or str(form.get("bundle_text") or "")
    if not text.strip():
        outcome = {"valid": False, "reason": "choose a result file or paste a bundle"}
        return _render(request, "verify.html", 400, outcome=outcome)
    try:
        verified = await run_in_threadpool(_console(request).session.verify_document, text)
    except SgxcloudError as exc:  # CleanroomError among them
        return _render(request, "verify.html", 200, outcome={"valid": False, "reason": str(exc)})
    return _render(request, "verify.html", outcome={"valid": True, "verified": verified})


async def _uploaded_text(upload: Any) -> str | None:
    """An uploaded file's text ("" without a file); None if it is not UTF-8."""
    if upload is None or not hasattr(upload, "read"):
        return ""
    raw = await upload.read(MAX_UPLOAD_BYTES + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- budget and audit -------------------------------------------------------------------------


async def budget(request: Request) -> Response:
    session = _console(request).session
    answer, problem = await _ask(session.budget)
    return _render(
        request,
        "budget.html",
        budget=answer,
        problem=problem,
        dp=session.definition.privacy.dp,
        dp_enabled=session.definition.privacy.dp_enabled,
    )


async def audit(request: Request) -> Response:
    view, problem = await _ask(_console(request).session.audit)
    entries = list(reversed(view.entries)) if view else []
    page, pages = _page(request.query_params.get("page", "1"), len(entries))
    shown = entries[(page - 1) * AUDIT_PAGE : page * AUDIT_PAGE]
    return _render(
        request,
        "audit.html",
        view=view,
        problem=problem,
        page=page,
        pages=pages,
        entries=[(e, views.audit_summary(e)) for e in shown],
    )


def _page(asked: str, count: int) -> tuple[int, int]:
    """(the page to show, how many pages) of ``count`` audit entries, newest
    first; whatever ``?page=`` says, a page that exists (the first for nonsense)."""
    try:
        page = max(1, int(asked))
    except ValueError:
        page = 1
    pages = max(1, -(-count // AUDIT_PAGE))
    return min(page, pages), pages


ROUTES = [
    Route("/", overview),
    Route("/definition", definition_page),
    Route("/approve", approve, methods=["POST"]),
    Route("/approval.json", approval_download),
    Route("/ingest", ingest, methods=["POST"]),
    Route("/query", query_index),
    Route("/query/{name}", query_form),
    Route("/query/{name}", query_run, methods=["POST"]),
    Route("/results", results),
    Route("/results/{result_id}", result_page),
    Route("/results/{result_id}/verify", result_verify),
    Route("/results/{result_id}/export.{fmt}", result_export),
    Route("/verify", verify_form),
    Route("/verify", verify_upload, methods=["POST"]),
    Route("/budget", budget),
    Route("/audit", audit),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


def _audience(result) -> str | None:
    if result.template != "audience_size":
        return None
    return views.cell_text(next((c for c in result.cells if c.metric == "people"), None), result)


def _download(body: str, filename: str, media_type: str) -> Response:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return Response(
        body,
        media_type=media_type,
        headers={"content-disposition": f'attachment; filename="{safe}"'},
    )
