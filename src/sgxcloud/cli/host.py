"""``sgxcloud host``: read-only checks run on an SGX compute node.

Thin over :mod:`sgxcloud.nova.checks`; the rendering helpers here are shared
with ``sgxcloud guest`` so both print the same kind of table.
"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from sgxcloud.nova.checks import Report, Status, check_host, check_vm_epc

_STYLE = {Status.OK: "green", Status.WARNING: "yellow", Status.FAILURE: "bold red"}
_VERDICT = {
    "host-check": ("node is ready to host SGX VMs", "node is NOT ready to host SGX VMs"),
    "vm-epc": ("every VM has the EPC it asked for", "EPC mismatch or unreadable VM"),
    "guest-check": ("SGX is usable in this guest", "SGX is NOT usable in this guest"),
}

root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True),
    default="/",
    show_default=True,
    help="Read the machine's files under this directory (a recorded tree) instead of /.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")


def emit(report: Report, as_json: bool, console: Console | None = None) -> int:
    """Print ``report`` (table or JSON) and return the command's exit status."""
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        return report.exit_code
    console = console or Console()
    console.print(findings_table(report))
    good, bad = _VERDICT.get(report.tool, ("ready", "not ready"))
    if report.ready:
        warnings = sum(f.status is Status.WARNING for f in report.findings)
        console.print(f"[green]✔ {good}[/]" + (f" ({warnings} warning(s))" if warnings else ""))
    else:
        console.print(f"[bold red]✘ {bad}[/]")
    return report.exit_code


def findings_table(report: Report) -> Table:
    table = Table(title=f"{report.tool} — root {report.root}", show_lines=False, expand=False)
    table.add_column("Check", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Detail")
    table.add_column("Fix")
    for finding in report.findings:
        style = _STYLE[finding.status]
        table.add_row(
            finding.check,
            f"[{style}]{finding.status.value}[/]",
            finding.detail,
            finding.fix or "",
        )
    return table


@click.group(name="host")
def host() -> None:
    """Check an SGX compute node and its VMs' EPC (read-only)."""


@host.command(name="check")
@root_option
@json_option
def check(root: str, as_json: bool) -> int:
    """Is this node ready to host SGX VMs?  Exit 0 only when it is."""
    return emit(check_host(root), as_json)


@host.command(name="vm-epc")
@root_option
@json_option
@click.argument("pid", type=click.IntRange(min=1), required=False)
@click.option("--domain", metavar="NAME", help="Only the QEMU process of this libvirt domain.")
def vm_epc(root: str, as_json: bool, pid: int | None, domain: str | None) -> int:
    """Compare each QEMU's mapped virtual EPC with what its domain XML asks for.

    Exit 0 when every selected VM has exactly the EPC it asked for.
    """
    if pid is not None and domain is not None:
        raise click.UsageError("give a PID or --domain, not both")
    report = check_vm_epc(root, pid=pid, domain=domain)
    if as_json:
        return emit(report, as_json)
    console = Console()
    if report.facts["vms"]:
        console.print(_vm_table(report))
    return emit(report, as_json, console)


def _vm_table(report: Report) -> Table:
    table = Table(title="Virtual EPC per QEMU process")
    for column in ("PID", "Domain", "Requested MiB", "Mapped MiB", "Status"):
        table.add_column(column, justify="right" if "MiB" in column or column == "PID" else "left")
    for vm in report.facts["vms"]:
        status = Status(vm["status"])
        table.add_row(
            str(vm["pid"]),
            vm["domain"] or "—",
            _mib(vm["requested_kib"]),
            _mib(vm["mapped_kib"]),
            f"[{_STYLE[status]}]{status.value}[/]",
        )
    return table


def _mib(kib: int | None) -> str:
    return "—" if kib is None else f"{kib / 1024:g}"
