"""The console's pages (Starlette).  Handlers decode the request, call the
party session, render a template; nothing here talks to the coordinator
except through :class:`~.session.PartySession` and so the SDK.

Every POST goes through :func:`_posted`, which refuses it without this
start's CSRF token; tests enumerate the routes to make sure none slips by.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sgxcloud.cleanroom.console import builder, charts, exports, views
from sgxcloud.cleanroom.console.security import Guard, GuardMiddleware
from sgxcloud.cleanroom.console.session import CoordinatorUnavailable, PartySession
from sgxcloud.cleanroom.errors import CleanroomError, QueryError, QueryRefused
from sgxcloud.cleanroom.sdk import VerifiedResult
from sgxcloud.cleanroom.transport.request_auth import RequestRejected
from sgxcloud.errors import SgxcloudError

HERE = Path(__file__).parent
RESULT_ID = re.compile(r"^[0-9a-f-]{1,64}$")
AUDIT_PAGE = 50
MAX_UPLOAD_BYTES = 4 << 20

REFUSAL_HELP = {
    "not_allowed": "The definition does not allow this for your party.",
    "budget": "Your differential-privacy budget cannot pay for this query.",
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


def create_app(session: PartySession, guard: Guard) -> Starlette:
    env = _environment()
    definition = session.definition
    recipients = {a.name: tuple(a.recipients) for a in definition.analyses}

    def render(request: Request, template: str, code: int = 200, **context: Any) -> Response:
        member = definition.party(session.party)
        page = env.get_template(template).render(
            party=session.party,
            display_name=member.display_name if member else "",
            roles=session.roles,
            is_provider=session.is_provider,
            analyses=builder.offers(definition, session.party),
            collaboration=definition.name,
            definition_hash=session.definition_hash,
            simulated=session.simulated,
            csrf=guard.csrf,
            path=request.url.path,
            **context,
        )
        return HTMLResponse(page, status_code=code)

    async def coordinator(call: Callable[[], Any]) -> tuple[Any, str | None]:
        """(answer, None) or (None, why the coordinator could not answer)."""
        try:
            return await run_in_threadpool(call), None
        except CoordinatorUnavailable as exc:
            return None, f"coordinator unavailable: {exc}"
        except RequestRejected as exc:
            return None, f"the coordinator refused our signed request: {exc}"
        except SgxcloudError as exc:
            return None, str(exc)

    def _posted(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(request: Request) -> Response:
            length = int(request.headers.get("content-length") or 0)
            if length > MAX_UPLOAD_BYTES:
                return render(
                    request,
                    "message.html",
                    413,
                    title="Too large",
                    message="The submitted form is larger than this console takes.",
                )
            form = await request.form(max_files=1, max_fields=500)
            if not guard.csrf_ok(str(form.get("csrf", ""))):
                return render(
                    request,
                    "message.html",
                    403,
                    title="Refused",
                    message="This form is not from this console's current start "
                    "(missing or stale CSRF token). Reload the page.",
                )
            return await handler(request, form)

        wrapper.csrf_protected = True  # type: ignore[attr-defined]
        return wrapper

    # -- overview, definition, approval, ingestion ----------------------------------------

    async def overview(request: Request) -> Response:
        status, problem = await coordinator(session.status)
        budget = None
        if status and any(session.party in a.analysts for a in definition.analyses):
            budget, _ = await coordinator(session.budget)
        mine = [
            d
            for d in (status or {}).get("datasets", [])
            if d.get("dataset", "").startswith(session.party + ".") and d.get("identifier_report")
        ]
        return render(
            request,
            "overview.html",
            status=status,
            problem=problem,
            budget=budget,
            my_datasets=mine,
            definition=definition,
            approval=session.approval,
            approval_out=session.approval_out,
        )

    async def definition_page(request: Request) -> Response:
        return render(
            request, "definition.html", definition=definition, document=definition.document
        )

    @_posted
    async def approve(request: Request, form) -> Response:
        if form.get("definition_hash") != session.definition_hash:
            return render(
                request,
                "message.html",
                400,
                title="Not approved",
                message="Tick the box that names the definition hash you reviewed.",
            )
        try:
            approval = await run_in_threadpool(session.approve)
        except CleanroomError as exc:
            return render(request, "message.html", 400, title="Not approved", message=str(exc))
        return render(
            request, "approved.html", approval=approval, approval_out=session.approval_out
        )

    async def approval_download(request: Request) -> Response:
        if session.approval is None:
            return render(
                request,
                "message.html",
                404,
                title="No approval",
                message="No approval was signed since this console started.",
            )
        import json

        body = json.dumps(session.approval.to_dict(), indent=2) + "\n"
        return _download(body, f"approval-{session.party}.json", "application/json")

    @_posted
    async def ingest(request: Request, form) -> Response:
        if not session.is_provider:
            return render(
                request,
                "message.html",
                403,
                title="Not a data provider",
                message="Only data providers have datasets to pull again.",
            )
        answer, problem = await coordinator(session.reingest)
        return render(request, "ingested.html", answer=answer, problem=problem)

    # -- queries ------------------------------------------------------------------------------

    async def query_index(request: Request) -> Response:
        return render(request, "query_index.html")

    def _offer(request: Request):
        return builder.offer_for(definition, session.party, request.path_params["name"])

    async def query_form(request: Request) -> Response:
        offer = _offer(request)
        if offer is None:
            return render(
                request,
                "message.html",
                404,
                title="No such analysis",
                message="You may not run an analysis of that name.",
            )
        return render(request, "query_form.html", offer=offer, form=builder.Form([]))

    @_posted
    async def query_run(request: Request, form) -> Response:
        offer = _offer(request)
        if offer is None:
            return render(
                request,
                "message.html",
                404,
                title="No such analysis",
                message="You may not run an analysis of that name.",
            )
        fields = builder.Form([(k, str(v)) for k, v in form.multi_items()])
        try:
            doc = builder.build_query(offer, fields)
        except QueryError as exc:
            return render(
                request,
                "query_form.html",
                400,
                offer=offer,
                form=fields,
                error={"title": "The query is not valid", "message": str(exc)},
            )
        try:
            verified = await run_in_threadpool(session.query, doc)
        except QueryRefused as exc:
            return render(
                request,
                "query_form.html",
                409,
                offer=offer,
                form=fields,
                error={
                    "title": f"Refused: {exc.reason.replace('_', ' ')}",
                    "message": exc.message,
                    "help": REFUSAL_HELP.get(exc.reason),
                    "reason": exc.reason,
                },
            )
        except QueryError as exc:
            return render(
                request,
                "query_form.html",
                400,
                offer=offer,
                form=fields,
                error={"title": "The coordinator found the query invalid", "message": str(exc)},
            )
        except (CoordinatorUnavailable, RequestRejected, SgxcloudError) as exc:
            return render(
                request,
                "query_form.html",
                502,
                offer=offer,
                form=fields,
                error={"title": "No answer", "message": str(exc)},
            )
        return RedirectResponse(f"/results/{verified.result.result_id}", status_code=303)

    # -- results ------------------------------------------------------------------------------

    async def results(request: Request) -> Response:
        audit, problem = await coordinator(session.audit)
        released = (
            views.visible_releases(list(audit.entries), session.party, recipients) if audit else []
        )
        return render(
            request, "results.html", kept=session.kept_results(), released=released, problem=problem
        )

    async def _result(request: Request) -> tuple[VerifiedResult | None, Response | None]:
        result_id = request.path_params["result_id"]
        if not RESULT_ID.match(result_id):
            return None, render(
                request,
                "message.html",
                404,
                title="No such result",
                message="That is not a result id.",
            )
        verified, problem = await coordinator(lambda: session.result(result_id))
        if verified is None:
            return None, render(
                request, "message.html", 404, title="Result not available", message=problem or ""
            )
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
        return render(
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
            return render(
                request,
                "message.html",
                404,
                title="No such result",
                message="That is not a result id.",
            )
        try:
            await run_in_threadpool(session.reverify, result_id)
        except (CleanroomError, SgxcloudError) as exc:
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
        return render(
            request,
            "message.html",
            404,
            title="No such export",
            message="Exports are CSV, JSON, and HTML for campaign lift.",
        )

    async def verify_form(request: Request) -> Response:
        return render(request, "verify.html", outcome=None)

    @_posted
    async def verify_upload(request: Request, form) -> Response:
        upload = form.get("bundle")
        text = ""
        if upload is not None and hasattr(upload, "read"):
            raw = await upload.read(MAX_UPLOAD_BYTES + 1)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return render(
                    request,
                    "verify.html",
                    400,
                    outcome={"valid": False, "reason": "not a result bundle (not UTF-8 text)"},
                )
        text = text or str(form.get("bundle_text") or "")
        if not text.strip():
            return render(
                request,
                "verify.html",
                400,
                outcome={"valid": False, "reason": "choose a result file or paste a bundle"},
            )
        try:
            verified = await run_in_threadpool(session.verify_document, text)
        except (CleanroomError, SgxcloudError) as exc:
            return render(request, "verify.html", 200, outcome={"valid": False, "reason": str(exc)})
        return render(request, "verify.html", outcome={"valid": True, "verified": verified})

    # -- budget and audit -------------------------------------------------------------------

    async def budget(request: Request) -> Response:
        answer, problem = await coordinator(session.budget)
        return render(
            request,
            "budget.html",
            budget=answer,
            problem=problem,
            dp=definition.privacy.dp,
            dp_enabled=definition.privacy.dp_enabled,
        )

    async def audit(request: Request) -> Response:
        view, problem = await coordinator(session.audit)
        try:
            page = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            page = 1
        entries = list(reversed(view.entries)) if view else []
        pages = max(1, -(-len(entries) // AUDIT_PAGE))
        page = min(page, pages)
        shown = entries[(page - 1) * AUDIT_PAGE : page * AUDIT_PAGE]
        return render(
            request,
            "audit.html",
            view=view,
            problem=problem,
            page=page,
            pages=pages,
            entries=[(e, views.audit_summary(e)) for e in shown],
        )

    routes = [
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
    app = Starlette(routes=routes)
    app.state.session = session
    return GuardMiddleware(app, guard)  # type: ignore[return-value]


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
