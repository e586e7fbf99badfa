"""``sgxcloud demo``: the whole story on this machine, in one command."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from sgxcloud.cli.output import safe
from sgxcloud.demo import SECTIONS, run_demo


@click.command(name="demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the demo writes domain XML, charts, reports and data.",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(SECTIONS),
    help="Run only these sections (repeatable). Default: all.",
)
@click.option(
    "--people",
    type=click.IntRange(min=1000),
    default=None,
    help="Clean room: people per provider in the generated data.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the sections' summaries as JSON at the end."
)
def demo(workdir: Path, only: tuple[str, ...], people: int | None, as_json: bool) -> int:
    """Run the end-to-end demonstration.

    An in-process OpenStack cloud places SGX servers by EPC and bills EPC
    MB-hours; an enclave attests to the configuration service (SIMULATED:
    this machine has no SGX) and receives its configuration; three companies
    run clean-room analyses that release only aggregates.
    """
    console = Console(stderr=as_json)
    summary = run_demo(console, workdir, only or SECTIONS, people=people)
    console.rule("[bold]Done")
    console.print(
        f"Outputs are in {safe(workdir.resolve())}; seconds per section: {summary['seconds']}"
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    return 0
