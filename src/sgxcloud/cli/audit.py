"""``sgxcloud audit``: read and verify the CAS audit chain, straight from its database.

Operators run these next to the service (same settings file); they read the
database without migrating it.  Exit status of ``verify``: 0 intact, 1 broken,
2 usage or input error.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from sgxcloud.cas import audit as audit_log
from sgxcloud.cas.config import load_settings
from sgxcloud.cas.store import Database

_config = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The CAS settings file (its database_url is used; env SGXCLOUD_CAS_* apply).",
)
_database = click.option(
    "--database-url",
    metavar="URL",
    help="Read this database instead (sqlite:///FILE or postgresql://...).",
)
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _open(config_path: Path | None, database_url: str | None) -> Database:
    settings = load_settings(config_path, database_url=database_url)
    return Database.open(settings.database_url, migrate=False)


@click.group(name="audit")
def audit() -> None:
    """Inspect and verify the CAS audit log (a hash chain of every decision)."""


@audit.command(name="verify")
@_config
@_database
@_json
def verify(config_path: Path | None, database_url: str | None, as_json: bool) -> int:
    """Check that no audit entry was edited, deleted or reordered.

    Recomputes every entry's hash and link and compares the last entry with
    the chain head.  Prints the head hash: keep a copy elsewhere to detect
    later rewrites of the whole chain.  Exit 0 intact, 1 broken.
    """
    database = _open(config_path, database_url)
    try:
        report = audit_log.verify_chain(database)
    finally:
        database.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        Console().print(
            Panel.fit(
                f"{report.entries} entries, head #{report.head_seq}\nhead hash {report.head_hash}",
                title="audit chain intact",
                style="green",
            )
        )
    else:
        table = Table("seq", "problem", title="audit chain BROKEN", title_style="bold red")
        for problem in report.problems:
            table.add_row(str(problem.seq), problem.problem)
        Console().print(table)
    return 0 if report.ok else 1


@audit.command(name="show")
@_config
@_database
@click.option("--after", type=click.IntRange(min=0), default=0, help="Start after this seq.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@_json
def show(
    config_path: Path | None, database_url: str | None, after: int, limit: int, as_json: bool
) -> int:
    """List audit entries: attestation decisions and policy changes."""
    database = _open(config_path, database_url)
    try:
        entries = audit_log.entries(database, after=after, limit=limit)
    finally:
        database.close()
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    table = Table("seq", "time (UTC)", "kind", "subject", "outcome", "detail", title="audit log")
    for e in entries:
        when = dt.datetime.fromtimestamp(e.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        style = {"rejected": "red", "accepted": "green"}.get(e.outcome, "")
        table.add_row(
            str(e.seq),
            when,
            e.kind,
            e.subject,
            f"[{style}]{e.outcome}[/]" if style else e.outcome,
            _summary(e),
        )
    Console().print(table)
    return 0


def _summary(entry: audit_log.AuditEntry) -> str:
    detail = entry.detail
    if entry.kind == audit_log.AuditKind.ATTESTATION:
        parts = []
        if detail.get("simulated"):
            parts.append("SIMULATED")
        if detail.get("mrenclave"):
            parts.append(f"MRENCLAVE {detail['mrenclave'][:12]}…")
        parts.extend(detail.get("reasons", []))
        return "; ".join(parts)
    return f"v{detail.get('version')} {str(detail.get('policy_hash'))[:12]}…"
