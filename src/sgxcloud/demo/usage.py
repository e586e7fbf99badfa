"""Demo screen: what the servers the demo booted cost in EPC MB-hours.

``run(console, workdir, cloud)`` is called by the main demo with its
in-process Nova (Nova's functional harness: real API, scheduler, Placement;
libvirt faked, so no SGX hardware is involved).  What it needs from ``cloud``,
in order of preference:

- ``cloud.sdk_connection()`` (or a ``cloud.connection`` attribute): an
  ``openstack.connection.Connection`` with **admin** rights on that Nova and
  its Placement, plus ``cloud.project_id``, the project whose servers the demo
  booted; or
- the harness objects themselves: ``cloud.api_fixture`` (Nova's
  ``OSAPIFixture``; its ``admin_api.base_url`` and ``project_id`` are used)
  and the in-process Placement (``compat.placement_endpoint``).

The figures are Nova's own usage plus EPC MB-hours computed by
:mod:`sgxcloud.nova.usage`, the same code ``openstack sgx usage show`` runs.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from sgxcloud.nova import charts, compat, placement
from sgxcloud.nova import usage as epc_usage
from sgxcloud.nova.accounting import as_utc


def harness_connection(compute_url: str, placement_url: str, project_id: str) -> Any:
    """openstacksdk on Nova's in-process API, authenticated the way its harness is.

    The harness stubs Keystone and trusts identity headers, as Nova's own
    test client sends them; this is never how a real cloud is reached.
    """
    from keystoneauth1 import noauth, session
    from openstack import connection

    headers = {
        "X-Auth-User": "admin",
        "X-User-Id": "admin",
        "X-Auth-Project-Id": project_id,
        "X-Roles": "reader,member,admin",
    }
    sess = session.Session(auth=noauth.NoAuth(), additional_headers=headers)
    return connection.Connection(
        session=sess,
        compute_endpoint_override=compute_url,
        placement_endpoint_override=placement_url,
        compute_api_version="2",
    )


def _connect(cloud: Any) -> tuple[Any, str]:
    if hasattr(cloud, "sdk_connection"):
        return cloud.sdk_connection(), cloud.project_id
    if hasattr(cloud, "connection"):
        return cloud.connection, cloud.project_id
    api = cloud.api_fixture
    return (
        harness_connection(
            api.admin_api.base_url, compat.placement_endpoint(cloud), api.project_id
        ),
        api.project_id,
    )


def _usage_with_every_launched_server(
    conn: Any, project: str, start: dt.datetime, end: dt.datetime
) -> epc_usage.ProjectEpcUsage:
    """Nova's usage, once it lists every server already launched.

    On the in-process harness os-simple-tenant-usage was seen to miss a server
    for a moment right after it turned ACTIVE; the demo boots servers just
    before this screen, so it waits (at most ~5 s) for Nova to catch up.
    """
    launched = {
        s.id
        for s in conn.compute.servers(details=True, all_projects=True, project_id=project)
        if s.launched_at
    }
    for _ in range(50):
        usage = epc_usage.project_usage(conn, project, start, end)
        if launched <= {s.server_id for s in usage.servers}:
            break
        time.sleep(0.1)
    return usage


def run(console: Console, workdir: Path, cloud: Any) -> dict:
    """Show the usage report with EPC MB-hours and write ``epc-usage.png`` into ``workdir``."""
    conn, project = _connect(cloud)
    window = getattr(cloud, "usage_window", None)  # the Nova section's simulated week
    if window:
        start, end = (as_utc(moment) for moment in window)
        period = f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC, simulated clock"
    else:
        now = dt.datetime.now(dt.UTC)
        start, end = now - dt.timedelta(days=1), now + dt.timedelta(minutes=1)
        period = "last 24 h"
    console.print(
        Panel(
            "Nova's os-simple-tenant-usage counts CPU, RAM and disk hours; sgxcloud adds\n"
            "[bold]EPC MB-hours[/] = flavor EPC size x the hours Nova counts for each server\n"
            "(resizes charged by size over time). Same code as `openstack sgx usage show`.\n"
            "[dim]In-process Nova with a fake libvirt: no SGX hardware here.[/]",
            title="Usage accounting",
        )
    )
    usage = _usage_with_every_launched_server(conn, project, start, end)

    totals = Table(title=f"Usage on project {project} ({period})")
    totals.add_column("Field")
    totals.add_column("Value", justify="right")
    for field, value in (
        ("Servers", str(len(usage.servers))),
        ("RAM MB-Hours", f"{usage.total_memory_mb_usage:.2f}"),
        ("CPU Hours", f"{usage.total_vcpus_usage:.2f}"),
        ("Disk GB-Hours", f"{usage.total_local_gb_usage:.2f}"),
        ("EPC MB-Hours", f"[bold]{usage.epc_mb_hours:.4f}[/]"),
    ):
        totals.add_row(field, value)
    console.print(totals)

    per_server = Table(title="Per server")
    for column in ("Server", "Flavor", "State", "EPC MiB", "Hours (Nova)", "EPC MB-Hours"):
        per_server.add_column(
            column, justify="right" if "Hours" in column or "MiB" in column else "left"
        )
    for server in usage.servers:
        per_server.add_row(
            server.name,
            server.flavor,
            server.state,
            str(server.epc_mb),
            f"{server.hours:.4f}",
            f"{server.epc_mb_hours:.4f}" + ("" if server.epc_exact else " (approx.)"),
        )
    console.print(per_server)

    hosts = placement.host_epc(conn)
    host_table = Table(title="EPC per SGX host (Placement)")
    for column in ("Host", "Total MiB", "Reserved", "Used", "Free", "SGX servers"):
        host_table.add_column(column, justify="left" if column == "Host" else "right")
    for host in hosts:
        host_table.add_row(
            host.name,
            str(host.total_mb),
            str(host.reserved_mb),
            str(host.used_mb),
            str(host.free_mb),
            str(host.sgx_servers),
        )
    console.print(host_table)

    workdir.mkdir(parents=True, exist_ok=True)
    chart = charts.write_chart([usage], str(workdir / "epc-usage.png"), by="server")
    console.print(f"Chart of EPC MB-hours per server: [bold]{chart}[/]")
    return {
        "project": project,
        "servers": len(usage.servers),
        "sgx_servers": len(usage.sgx_servers),
        "epc_mb_hours": round(usage.epc_mb_hours, 6),
        "epc_mb_hours_per_server": {s.name: round(s.epc_mb_hours, 6) for s in usage.servers},
        "cpu_hours": usage.total_vcpus_usage,
        "hosts": {h.name: {"total_mb": h.total_mb, "used_mb": h.used_mb} for h in hosts},
        "chart": chart,
    }
