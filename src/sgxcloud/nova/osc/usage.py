"""``openstack sgx usage show``, ``list`` and ``export``.

``show``/``list``: same rows and values as ``openstack usage show/list``
(Nova's os-simple-tenant-usage, formatted by OSC's own column classes), plus
``EPC MB-Hours``.  ``export``: one line per server and window with stable,
snake_case columns (:data:`EXPORT_COLUMNS`) for a billing system to import
with ``-f csv`` or ``-f json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Iterable
from typing import Any

from openstack import utils as sdk_utils
from openstackclient.compute.v2.usage import CountColumn, FloatColumn
from openstackclient.identity import common as identity_common
from osc_lib import exceptions
from osc_lib.command import command

from sgxcloud.nova import charts
from sgxcloud.nova import usage as epc_usage
from sgxcloud.nova.accounting import as_utc

DATE_FORMAT = "%Y-%m-%d"
COLUMNS = ("Project", "Servers", "RAM MB-Hours", "CPU Hours", "Disk GB-Hours", "EPC MB-Hours")


def parse_when(text: str | None, default: dt.datetime) -> dt.datetime:
    """``2026-03-01`` (as OSC takes it) or a full ISO time; naive means UTC."""
    if not text:
        return default
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise exceptions.CommandError(
            f"invalid date {text!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS"
        ) from None
    return as_utc(value) or default


def window(parsed_args: argparse.Namespace) -> tuple[dt.datetime, dt.datetime]:
    """The window OSC's usage commands use by default: 4 weeks ago to tomorrow."""
    now = dt.datetime.now(dt.UTC)
    start = parse_when(parsed_args.start, now - dt.timedelta(weeks=4))
    end = parse_when(parsed_args.end, now + dt.timedelta(days=1))
    if not start < end:
        raise exceptions.CommandError("--start must be before --end")
    return start, end


def row(usage: epc_usage.ProjectEpcUsage) -> tuple[Any, ...]:
    """Table cells as OSC shows them; ``-f json`` gets numbers and per-server rows."""
    servers = [
        {
            "instance_id": s.server_id,
            "name": s.name,
            "flavor": s.flavor,
            "hours": s.hours,
            "epc_mb": s.epc_mb,
            "epc_mb_hours": s.epc_mb_hours,
            "epc_exact": s.epc_exact,
            "held_hours": s.held_hours,
            "nova_hours_differ": s.nova_hours_differ,
        }
        for s in usage.servers
    ]
    return (
        usage.project_id,
        CountColumn(servers),
        FloatColumn(usage.total_memory_mb_usage),
        FloatColumn(usage.total_vcpus_usage),
        FloatColumn(usage.total_local_gb_usage),
        FloatColumn(usage.epc_mb_hours),
    )


def _project_id(conn: Any, parsed_args: argparse.Namespace) -> str | None:
    """The ID of the project ``--project`` names (a name or an ID, in
    ``--project-domain``), as ``openstack usage show`` finds it; None without it."""
    if not parsed_args.project:
        return None
    identity = sdk_utils.ensure_service_version(conn.identity, "3")
    return identity_common.find_project_id_sdk(
        identity, parsed_args.project, parsed_args.project_domain
    )


def _add_window_and_chart(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--start",
        metavar="<start>",
        help="Usage range start date, ex 2012-01-20 (default: 4 weeks ago)",
    )
    parser.add_argument(
        "--end", metavar="<end>", help="Usage range end date, ex 2012-01-20 (default: tomorrow)"
    )
    parser.add_argument(
        "--chart",
        metavar="<file.png>",
        help="Also write a PNG bar chart of EPC MB-hours to this file",
    )
    parser.add_argument(
        "--chart-by",
        choices=("server", "day"),
        default="server",
        help="Chart EPC MB-hours per server (default) or per day",
    )


class ShowSGXUsage(command.ShowOne):
    _description = "Show resource usage, with EPC MB-hours, for a single project"

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--project", metavar="<project>", help="Name or ID of project to show usage for"
        )
        identity_common.add_project_domain_option_to_parser(parser)
        _add_window_and_chart(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
        conn = self.app.client_manager.sgx
        start, end = window(parsed_args)
        project = _project_id(conn, parsed_args)
        if project is None:
            project = self.app.client_manager.auth_ref.project_id
        result = epc_usage.project_usage(conn, project, start, end)
        if parsed_args.chart:
            charts.write_chart([result], parsed_args.chart, by=parsed_args.chart_by)
        if parsed_args.formatter == "table":
            self.app.stdout.write(
                f"Usage from {start.strftime(DATE_FORMAT)} to {end.strftime(DATE_FORMAT)} "
                f"on project {project}: \n"
            )
        return COLUMNS, row(result)


class ListSGXUsage(command.Lister):
    _description = "List resource usage, with EPC MB-hours, per project"

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_window_and_chart(parser)
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        conn = self.app.client_manager.sgx
        start, end = window(parsed_args)
        results = epc_usage.usages(conn, start, end)
        if parsed_args.chart:
            charts.write_chart(results, parsed_args.chart, by=parsed_args.chart_by)
        if parsed_args.formatter == "table" and results:
            self.app.stdout.write(
                f"Usage from {start.strftime(DATE_FORMAT)} to {end.strftime(DATE_FORMAT)}: \n"
            )
        return COLUMNS, [row(r) for r in results]


# A contract with billing systems: names and order only ever grow at the end
# (docs/operations/usage.md documents each column; a test pins the tuple).
EXPORT_COLUMNS = (
    "window_start",
    "window_end",
    "project_id",
    "server_id",
    "server_name",
    "flavor",
    "epc_mb",
    "epc_mb_hours",
    "held_hours",
    "exact",
    "nova_hours",
    "nova_hours_differ",
)


def export_rows(results: Iterable[epc_usage.ProjectEpcUsage]) -> list[tuple[Any, ...]]:
    """One line per server and window; times ISO 8601 UTC, figures as plain numbers."""
    lines = []
    for usage in results:
        start = usage.start.strftime("%Y-%m-%dT%H:%M:%SZ")
        stop = usage.stop.strftime("%Y-%m-%dT%H:%M:%SZ")
        for s in usage.servers:
            line = (start, stop, usage.project_id, s.server_id, s.name, s.flavor, s.epc_mb)
            figures = (round(s.epc_mb_hours, 6), round(s.held_hours, 6), s.epc_exact)
            lines.append((*line, *figures, round(s.hours, 6), s.nova_hours_differ))
    return lines


class ExportSGXUsage(command.Lister):
    _description = (
        "Export EPC MB-hours per server for a billing system (-f csv or -f json; "
        "stable column names)"
    )

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--project", metavar="<project>", help="Only this project (name or ID; default: all)"
        )
        identity_common.add_project_domain_option_to_parser(parser)
        parser.add_argument(
            "--start", metavar="<start>", help="Window start, ex 2026-03-01 (default: 4 weeks ago)"
        )
        parser.add_argument(
            "--end", metavar="<end>", help="Window end, ex 2026-04-01 (default: tomorrow)"
        )
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        conn = self.app.client_manager.sgx
        start, end = window(parsed_args)
        project = _project_id(conn, parsed_args)
        if project is not None:
            results = [epc_usage.project_usage(conn, project, start, end)]
        else:
            results = epc_usage.usages(conn, start, end)
        return EXPORT_COLUMNS, export_rows(results)
