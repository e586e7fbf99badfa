"""``sgxcloud host``: read-only checks run on an SGX compute node.

Thin over :mod:`sgxcloud.nova.checks`; the rendering helpers here are shared
with ``sgxcloud guest`` so both print the same kind of table.
"""

from __future__ import annotations

import contextlib
import json

import click
from rich.console import Console
from rich.table import Table

from sgxcloud.cli.output import safe
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
        console.print(
            f"[green]✔ {safe(good)}[/]" + (f" ({warnings} warning(s))" if warnings else "")
        )
    else:
        console.print(f"[bold red]✘ {bad}[/]")
    return report.exit_code


def findings_table(report: Report) -> Table:
    table = Table(
        title=f"{safe(report.tool)} — root {safe(report.root)}", show_lines=False, expand=False
    )
    table.add_column("Check", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Detail")
    table.add_column("Fix")
    for finding in report.findings:
        style = _STYLE[finding.status]
        table.add_row(
            safe(finding.check),
            f"[{style}]{finding.status.value}[/]",
            safe(finding.detail),  # may quote what it read: VM names, files, command lines
            safe(finding.fix or ""),
        )
    return table


@click.group(name="host")
def host() -> None:
    """Check an SGX compute node and its VMs' EPC (read-only)."""


@host.command(name="check")
@root_option
@json_option
@click.option(
    "--config-file",
    "config_files",
    multiple=True,
    metavar="PATH",
    help="nova-compute's configuration file; repeat it as for nova-compute (later files "
    "override earlier ones).  Default: /etc/nova/nova.conf, else kolla-ansible's "
    "/etc/kolla/nova-compute/nova.conf.",
)
def check(root: str, as_json: bool, config_files: tuple[str, ...]) -> int:
    """Is this node ready to host SGX VMs?  Exit 0 only when it is."""
    return emit(check_host(root, config_files=config_files), as_json)


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
            safe(vm["domain"] or "—"),  # a tenant names its VM
            _mib(vm["requested_kib"]),
            _mib(vm["mapped_kib"]),
            f"[{_STYLE[status]}]{status.value}[/]",
        )
    return table


def _mib(kib: int | None) -> str:
    return "—" if kib is None else f"{kib / 1024:g}"


@host.command(name="exporter")
@root_option
@click.option("--host", "hostname", metavar="NAME", help="host label (default: the node's name)")
@click.option(
    "--listen",
    metavar="ADDR:PORT",
    # exporter.DEFAULT_PORT; the exporter module is imported only when used
    # (prometheus-client comes with the 'host' extra, `guest check` needs none).
    default="127.0.0.1:9842",
    show_default=True,
    help="Serve GET /metrics here (Prometheus text format).",
)
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False),
    help="Instead of serving, write the metrics once to this file for node_exporter's "
    "textfile collector (atomically: a temporary file, then rename) and exit.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="When serving: re-read the node (and re-run the host check) at most this often, s.",
)
def exporter_command(
    root: str, hostname: str | None, listen: str, textfile: str | None, interval: float
) -> int:
    """Prometheus metrics of this node: EPC capacity, reserved, allocated, free
    (per host and per NUMA node), EPC per server, and the host check's verdict."""
    from sgxcloud.nova.checks import exporter

    if textfile is not None:
        state = exporter.node_state_from_tree(root, hostname)
        try:
            exporter.write_textfile(textfile, exporter.render([state]))
        except OSError as exc:
            raise click.ClickException(f"cannot write {textfile}: {exc.strerror or exc}") from None
        return 0
    address, _, port = listen.rpartition(":")
    if not address or not port.isdigit():
        raise click.BadParameter("use ADDR:PORT, e.g. 127.0.0.1:9842", param_hint="--listen")
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per scrape is noise

    states = exporter.CachedState(lambda: exporter.node_state_from_tree(root, hostname), interval)
    try:
        server = make_server(address.strip("[]"), int(port), exporter.make_wsgi_app(states),
                             handler_class=_Quiet)  # fmt: skip
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    click.echo(f"serving http://{listen}/metrics", err=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0
