"""Demo: three companies measure a campaign without showing each other a customer.

A bank, a telecom operator and a retailer each run a node next to their own
(synthetic) data; a coordinator runs the analyses.  All are separate
processes on this machine, with SIMULATED attestation because there is no
SGX here.  The brand sizes an audience, measures campaign lift (HTML report
with a chart), sees a small group suppressed and a differencing attempt
defeated (under DP by noise: the difference of two noisy counts says nothing
exact about the small group; with DP off, refused by the differencing check),
and verifies the signed result as a recipient would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from sgxcloud.cleanroom.approvals import Approval, private_key_from_pem, verify_approvals
from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.errors import QueryRefused
from sgxcloud.cleanroom.local import prepare_example
from sgxcloud.cleanroom.report import summary, write_lift_report
from sgxcloud.cleanroom.sdk import CleanroomClient, verify_bundle
from sgxcloud.cleanroom.transport.trust import SIMULATION_OPT_IN, SIMULATION_WARNING

DEFAULT_PEOPLE = 60_000
SEGMENT = (
    "(bank.customers.premium_card = true OR retailer.customers.baby_buyer = true) "
    "AND telecom.subscribers.region = 'north'"
)
LIFT_BREAKDOWN = "bank.customers.premium_card"
TINY = (
    "telecom.subscribers.device = 'other' AND bank.customers.income_band = 'high' "
    "AND retailer.customers.loyalty_tier = 'gold'"
)


def run(console: Console, workdir: Path, people: int = DEFAULT_PEOPLE) -> dict[str, Any]:
    started = time.monotonic()
    workdir = Path(workdir) / "cleanroom"
    console.print(
        Panel(
            "A bank, a telecom operator and a retailer pool data for a brand's campaign.\n"
            "Each runs a [bold]node[/] next to its own data; a [bold]coordinator[/] enclave "
            "matches people and releases only aggregates: differentially private (OpenDP "
            "noise, a budget per analyst), k-suppression decided on the noisy counts, and, "
            "when DP is off, a differencing check instead.\n"
            "[bold red]SIMULATED attestation[/]: this machine has no SGX, so every enclave "
            "here is a plain process whose evidence is labelled simulated.",
            title="Confidential data clean room",
            border_style="blue",
        )
    )
    # Every node and the coordinator below is started with --allow-simulated:
    # without it each would refuse the others, whatever the definition says.
    console.print(
        Panel(
            SIMULATION_WARNING,
            style="bold red",
            title=f"WARNING: processes started with {SIMULATION_OPT_IN}",
        )
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task(f"generating data for {people:,} people", total=people)
        collab = prepare_example(
            workdir, people=people, progress=lambda done, total: bar.update(task, completed=done)
        )
    definition = load_definition(collab.definition)
    approvals = [Approval.from_dict(json.loads(p.read_text())) for p in collab.approvals]
    status = verify_approvals(definition, approvals)
    table = Table(title=f"definition {definition.definition_hash()[:16]}… approvals")
    for col in ("party", "roles", "approved definition + enclaves"):
        table.add_column(col)
    for party in definition.parties:
        mark = "[green]✔ signed[/]" if party.name in status.valid else "–"
        table.add_row(party.name, ", ".join(party.roles), mark)
    console.print(table)
    for warning in definition.privacy.warnings():  # what every approver was told
        console.print(Panel(warning, style="bold red", title="WARNING: privacy settings"))

    with collab:
        processes = Table(title="separate processes (SIMULATED attestation)")
        for col in ("process", "pid", "listens on"):
            processes.add_column(col)
        for name, pid in collab.pids().items():
            provider = name.removeprefix("node-")
            address = collab.addresses.get(provider)
            where = f"{address[0]}:{address[1]}" if address else collab.url
            processes.add_row(name, str(pid), where)
        console.print(processes)
        ingest = Table(title="data pulled over attested TLS (identifiers re-keyed in the nodes)")
        for col in ("dataset", "state", "rows"):
            ingest.add_column(col)
        for entry in collab.ingestion.values():
            ingest.add_row(entry["dataset"], entry["state"], f"{entry.get('rows', 0):,}")
        console.print(ingest)

        key = private_key_from_pem((workdir / "keys" / "brand.pem").read_bytes())
        with CleanroomClient.connect(collab.url, definition, "brand", key) as brand:
            try:
                audience_result = brand.query(
                    {"template": "audience_size", "analysis": "audience", "filter": SEGMENT}
                )
                audience: int | None = audience_result.result.value("people")
                shown = f"[bold]{audience:,}[/] people" + (
                    " (with DP noise)" if audience_result.result.cell("people").noisy else ""
                )
            except QueryRefused as exc:  # a small --people run can make it too small
                audience, shown = None, f"[yellow]{exc}[/]"
            console.print(
                Panel(
                    f"{SEGMENT}\n→ {shown}", title="audience size across bank, telecom and retailer"
                )
            )

            lift = brand.query(
                {
                    "template": "campaign_lift",
                    "analysis": "lift",
                    # three segments (true, false, none), not six regions: at ε 0.25 a
                    # lift's measures get 0.05 each, and bigger segments keep the lift
                    # readable (overall relative lift ± 10 points, not ± 18 by region;
                    # docs/cleanroom/privacy-model.md, 'What a budget permits')
                    "breakdown": LIFT_BREAKDOWN,
                }
            )
            report = write_lift_report(
                lift.result, workdir / "lift-report.html", simulated=lift.simulated
            )
            console.print(_lift_table(lift.result))
            console.print(f"HTML report with chart: [bold]{report}[/]")

            try:
                tiny = brand.query(
                    {"template": "audience_size", "analysis": "audience", "filter": TINY}
                )
                suppressed = bool(tiny.result.cell("people").suppressed)
            except QueryRefused as exc:
                suppressed = exc.reason == "suppressed"
            noisy = " (noisy count)" if definition.privacy.dp_enabled else ""
            console.print(
                Panel(
                    f"{TINY}\n→ [yellow]suppressed[/]: fewer than "
                    f"k={definition.privacy.min_group_size} people{noisy}"
                    if suppressed
                    else "→ released (group was large enough)",
                    title="small group",
                )
            )

            # The first question of the pair is the audience above, asked again: the
            # coordinator answers it from its cache, identically and at no cost, so the
            # demo's four charged questions fit the example's budget of ε = 1
            # (0.25 each; docs/cleanroom/privacy-model.md, 'What a budget permits').
            base = SEGMENT
            try:
                first = brand.query(
                    {"template": "audience_size", "analysis": "audience", "filter": base}
                )
            except QueryRefused:  # a small --people run can make it too small
                first = None
            try:
                second = brand.query(
                    {
                        "template": "audience_size",
                        "analysis": "audience",
                        "filter": f"{base} AND NOT ({TINY})",
                    }
                )
                differencing = "released"
            except QueryRefused as exc:
                second, differencing = None, exc.reason
            if differencing == "differencing":
                outcome = (
                    "[bold red]refused[/]: the cohorts differ by fewer than k people, "
                    "so subtracting the answers would reveal a small group"
                )
            elif (
                second is not None
                and first is not None
                and definition.privacy.dp_enabled
                and None not in (first.result.value("people"), second.result.value("people"))
            ):
                a, b = first.result.value("people"), second.result.value("people")
                outcome = (
                    f"released with noise: {a} − {b} = {a - b} is a difference of "
                    "two noisy counts and says nothing exact about the small group "
                    "(DP protects it; a refusal decided on the exact data would itself "
                    "reveal whether the group is empty, so under DP there is none)"
                )
            else:
                outcome = differencing
            console.print(
                Panel(
                    f"1. {base} (the audience again: answered from the cache, "
                    f"no ε spent)\n2. {base} AND NOT ({TINY})\n→ second query " + outcome,
                    title="differencing attempt",
                )
            )
            budget = brand.budget()
            if budget["total"] and definition.privacy.dp:
                eps = definition.privacy.dp.epsilon_per_query
                pooled = budget.get("collaboration")
                console.print(
                    f"privacy budget: brand spent ε {budget['spent']:.4g} of "
                    f"{budget['total']:.4g} ({budget['spent'] / eps:.0f} new questions × "
                    f"{eps:g}; repeats are free)"
                    + (
                        f"; every analyst together {pooled['spent']:.4g} of {pooled['total']:.4g}"
                        if pooled
                        else ""
                    ),
                    highlight=False,
                )
            entries = brand.audit()

        verified = verify_bundle(lift.to_json(), definition)
        console.print(
            f"recipient check: lift result {verified.result.result_id[:8]} signature "
            f"[green]verified[/] against the coordinator key bound in its "
            f"{'[bold red]SIMULATED[/] ' if verified.simulated else ''}attestation"
        )
        console.print(
            f"audit log: {len(entries)} hash-chained entries "
            f"({', '.join(sorted({e['event'] for e in entries}))})"
        )

    return {
        "simulated": True,
        "simulation_opt_in": SIMULATION_OPT_IN,
        "people": people,
        "audience": audience,
        "lift": summary(lift.result),
        "report": str(report),
        "small_group_suppressed": suppressed,
        "differencing": differencing,
        "dp": definition.privacy.dp_enabled,
        "budget": {
            "spent": budget["spent"],
            "total": budget["total"],
            "collaboration": budget.get("collaboration"),
        },
        "audit_entries": len(entries),
        "seconds": round(time.monotonic() - started, 1),
    }


def _lift_table(result) -> Table:
    table = Table(title="campaign lift by premium card (test vs control)")
    for col in (
        "segment",
        "test rate",
        "control rate",
        "relative lift [95% CI]",
        "p-value",
        "incremental revenue",
    ):
        table.add_column(col, justify="right")
    segments = sorted(
        {c.dims.get("segment", "(all)") for c in result.cells}, key=lambda s: (s != "(all)", s)
    )

    def get(metric, segment, arm=None):
        dims = {"segment": segment, **({"arm": arm} if arm else {})}
        try:
            cell = result.cell(metric, **dims)
        except KeyError:
            return None
        return "suppressed" if cell.suppressed else cell.value

    def pct(v):
        return v if isinstance(v, str) or v is None else f"{v * 100:.1f}%"

    for seg in segments:
        low, high = get("conversion_lift_rel_ci_low", seg), get("conversion_lift_rel_ci_high", seg)
        rel = get("conversion_lift_rel", seg)
        ci = (
            f" [{pct(low)}, {pct(high)}]"
            if isinstance(low, float) and isinstance(high, float)
            else ""
        )
        p = get("conversion_p_value", seg)
        rev = get("incremental_revenue", seg)
        table.add_row(
            seg,
            pct(get("conversion_rate", seg, "test")) or "–",
            pct(get("conversion_rate", seg, "control")) or "–",
            f"{pct(rel)}{ci}" if rel is not None else "–",
            f"{p:.4f}" if isinstance(p, float) else str(p or "–"),
            f"{rev:,.0f}" if isinstance(rev, float) else str(rev or "–"),
        )
    return table
