"""``sgxcloud guest``: what SGX looks like from inside a virtual machine."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from sgxcloud.cli.host import emit, json_option, root_option
from sgxcloud.cli.output import safe
from sgxcloud.nova.checks import check_guest


@click.group(name="guest")
def guest() -> None:
    """Check SGX from inside a virtual machine (read-only)."""


@guest.command(name="check")
@root_option
@json_option
def check(root: str, as_json: bool) -> int:
    """Is SGX visible and usable here, and how much EPC did this VM get?

    Exit 0 when the guest sees SGX, an enclave device and some EPC.
    """
    report = check_guest(root)
    if as_json:
        return emit(report, as_json)
    console = Console()
    counters = report.facts.get("isgx")
    if counters:
        table = Table(title="isgx driver counters (/sys/module/isgx/parameters)")
        table.add_column("Counter")
        table.add_column("Pages", justify="right")
        table.add_column("MiB", justify="right")
        for name, value in counters.items():
            table.add_row(safe(name), safe(value["pages"]), f"{value['mib']:g}")
        console.print(table)
    return emit(report, as_json, console)
