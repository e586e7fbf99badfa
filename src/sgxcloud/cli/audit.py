"""``sgxcloud audit``: read and verify the CAS audit chain.

Operators run these next to the service (same settings file); they read the
database without migrating it.  Policy owners read the entries about their
policies over the API instead (``show --url URL --key KEY``): that is where an
enclave's rejection reasons are, since the enclave is told only the entry's
ref (an opaque name: positions in the chain, which every tenant shares, are
the operator's), and verify it (``verify --url URL --key KEY``: a whole round of
re-checks of their entries, one API call per 1000).  Exit status of ``verify``:
0 intact, 1 broken; of ``show``:
0 listed, 1 the asked entry (``--seq``, ``--ref``) is not visible; 2 usage or input error.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
from click.core import ParameterSource
from rich.panel import Panel
from rich.table import Table

from sgxcloud.cas import audit as audit_log
from sgxcloud.cas.audit_refs import EntryRefs
from sgxcloud.cas.config import load_settings
from sgxcloud.cas.store import Database
from sgxcloud.cli.output import console, safe, wide_output
from sgxcloud.cli.owner_options import owner_credentials
from sgxcloud.cli.policy import Connection

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
_wide = click.option(
    "--wide",
    is_flag=True,
    help="Never crop values to the terminal's width (always so when output is not a terminal).",
)


def _open(config_path: Path | None, database_url: str | None) -> Database:
    settings = load_settings(config_path, database_url=database_url)
    return Database.open(settings.database_url, migrate=False)


def _ref_seq(
    config_path: Path | None, database_url: str | None, database: Database, ref: str
) -> int:
    """The position a ref names, read with the deployment's master key (operators)."""
    keyring = load_settings(config_path, database_url=database_url).keyring()
    deployment = database.run(lambda repo: repo.deployment_id())
    seq = EntryRefs(keyring, deployment).seq(ref)
    if seq is None:
        raise click.BadParameter("not the ref of an audit entry of this CAS", param_hint="--ref")
    return seq


@click.group(name="audit")
def audit() -> None:
    """Inspect and verify the CAS audit log (a hash chain of every decision)."""


_url = click.option(
    "--url",
    metavar="URL",
    envvar="SGXCLOUD_CAS_URL",
    help="Over the CAS API as a policy owner or consenting reader (signed with --key) instead "
    "of the database (env SGXCLOUD_CAS_URL; an explicit --config or --database-url wins over "
    "the environment).",
)


def _owner_mode(ctx: click.Context, url: str | None, local: bool) -> str | None:
    """The URL to use over the API, or None to read the database."""
    if url is not None and local and ctx.get_parameter_source("url") is ParameterSource.ENVIRONMENT:
        return None  # the operator named a database on the command line: read it
    if url is not None and local:
        raise click.UsageError("give --url (owner, over the API) or a database, not both")
    return url


@audit.command(name="verify")
@_config
@_database
@_url
@owner_credentials("With --url: ")
@click.option(
    "--once",
    is_flag=True,
    help="With --url: one verify call (up to 1000 of your older entries) instead of a whole "
    "round; says how many entries the round has left.",
)
@_json
@_wide
@click.pass_context
def verify(
    ctx: click.Context,
    config_path: Path | None,
    database_url: str | None,
    url: str | None,
    key_file: Path | None,
    cert_file: Path | None,
    deployment: str | None,
    ca_file: Path | None,
    cas_key: Path | None,
    once: bool,
    as_json: bool,
    wide: bool,
) -> int:
    """Check that no audit entry was edited, deleted or reordered.

    From the database (operators: --config or --database-url): recomputes
    every entry's hash and link and compares the last entry with the chain
    head.  Prints the head hash: keep a copy elsewhere to detect later
    rewrites of the whole chain.

    Over the API (owners and consenting readers: --url and --key): checks the
    chain appended since the CAS last verified it and re-checks every entry
    about your policies once per round.  A round takes one call per 1000 of
    your entries; this command makes the calls until the round is complete
    (progress on stderr), or one call with --once.

    Exit 0 intact (over the API: as far as checked), 1 broken.
    """
    url = _owner_mode(ctx, url, config_path is not None or database_url is not None)
    if (
        url is not None
        and key_file is None
        and ctx.get_parameter_source("url") is (ParameterSource.ENVIRONMENT)
    ):
        url = None  # an operator's scheduled walk in an owner's environment: the database
    if url is not None:
        owner = Connection(
            url, ca_file, key_file, cert_file, as_json, deployment=deployment, cas_key=cas_key
        )
        with owner.client() as client:
            answer = _verify_round(client, once=once, as_json=as_json)
        return _print_round(answer, as_json, wide)
    if once:
        raise click.UsageError("--once is for --url (a database is walked whole)")
    database = _open(config_path, database_url)
    try:
        report = audit_log.verify_chain(database)
    finally:
        database.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        console(wide).print(
            Panel.fit(
                f"{report.entries} entries, head #{report.head_seq}\nhead hash {report.head_hash}",
                title="audit chain intact",
                style="green",
            )
        )
    else:
        table = Table("seq", "problem", title="audit chain BROKEN", title_style="bold red")
        for problem in report.problems:
            table.add_row(str(problem.seq), safe(problem.problem))
        console(wide).print(table)
    return 0 if report.ok else 1


@audit.command(name="show")
@_config
@_database
@_url
@owner_credentials("With --url: ")
@click.option(
    "--after", type=click.IntRange(min=0), default=0, help="Start after this seq (database)."
)
@click.option(
    "--after-ref",
    metavar="REF",
    default="",
    help="With --url: start after this entry (the last ref of the previous page).",
)
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option(
    "--seq",
    type=click.IntRange(min=1),
    help="Show only the entry at this position (database; operators).",
)
@click.option(
    "--ref",
    metavar="REF",
    help="Show only this entry: the audit_ref a rejected enclave was given "
    "(over the API; from the database with --config, whose master key reads it).",
)
@_json
@_wide
@click.pass_context
def show(
    ctx: click.Context,
    config_path: Path | None,
    database_url: str | None,
    url: str | None,
    key_file: Path | None,
    cert_file: Path | None,
    deployment: str | None,
    ca_file: Path | None,
    cas_key: Path | None,
    after: int,
    after_ref: str,
    limit: int,
    seq: int | None,
    ref: str | None,
    as_json: bool,
    wide: bool,
) -> int:
    """List audit entries: attestation decisions (with every reason) and policy changes.

    From the database (operators: --config or --database-url), or over the API
    (owners: --url and --key), which lists only entries about policies you
    own or read.
    """
    if seq is not None and ref is not None:
        raise click.UsageError("give --seq or --ref, not both")
    url = _owner_mode(ctx, url, config_path is not None or database_url is not None)
    if url is not None:
        if seq is not None or after:
            raise click.UsageError(
                "over the API entries are named by ref, not position: use --ref / --after-ref"
            )
        owner = Connection(
            url, ca_file, key_file, cert_file, as_json, deployment=deployment, cas_key=cas_key
        )
        with owner.client() as client:
            if ref is not None:
                found = client.audit_entry(ref)
                listed = [found] if found else []
            else:
                listed, more = client.audit_page(after=after_ref, limit=min(limit, 1000))
                if more:  # the CAS stopped the page at its byte bound
                    console(stderr=True).print(
                        f"(page cut at its size: more with --after-ref {safe(more)})"
                    )
        return _print(listed, "ref", ref, as_json, wide)
    if after_ref:
        raise click.UsageError("--after-ref pages over the API (--url); a database pages --after")
    database = _open(config_path, database_url)
    try:
        if ref is not None:
            seq = _ref_seq(config_path, database_url, database, ref)
        if seq is not None:
            after, limit = seq - 1, 1
        listed = [e.to_dict() for e in audit_log.entries(database, after=after, limit=limit)]
    finally:
        database.close()
    if seq is not None:
        listed = [e for e in listed if e["seq"] == seq]
    return _print(listed, "seq", ref or (f"#{seq}" if seq is not None else None), as_json, wide)


def _verify_round(client: object, *, once: bool, as_json: bool) -> dict:
    """Verify calls over the API until the caller's round is complete (one with ``once``)."""
    from rich.progress import BarColumn, Progress, TextColumn

    from sgxcloud.cas.client.owner import verify_audit_round

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[note]}"),
        console=console(stderr=True),
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task("re-checking your audit entries", total=None, note="")
        start: dict[str, int] = {}

        def progress(answer: dict, calls: int) -> None:
            left = int(answer.get("round_left", 0))
            total = start.setdefault("total", left + 1000 * calls)
            bar.update(
                task,
                description=f"round {answer.get('round', '?')}, call {calls}",
                total=max(total, left),
                completed=max(total, left) - left,
                note=f"{left:,} of your entries left",
            )

        return verify_audit_round(
            client,  # type: ignore[arg-type]
            max_calls=1 if once else 100_000,
            progress=progress,
        )


def _print_round(answer: dict, as_json: bool, wide: bool) -> int:
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return 0 if answer["ok"] else 1
    calls = answer.get("calls", 1)
    if not answer["ok"]:
        kinds = safe(", ".join(str(p["problem"]) for p in answer["problems"]))
        console(wide).print(
            Panel.fit(
                f"{kinds}\n(the operator sees where with 'sgxcloud audit verify' on the database)",
                title="audit chain BROKEN",
                style="bold red",
            )
        )
        return 1
    if "round_complete" not in answer:  # a CAS of an earlier release
        text = "what this call checked is intact (this CAS does not report rounds)"
    elif answer["round_complete"]:
        text = (
            f"round {safe(answer['round'])} complete in {calls} call(s): every entry about your "
            "policies re-checked, and the chain since the CAS last verified it"
        )
    else:
        text = (
            f"round {safe(answer['round'])}: {answer['round_left']:,} of your entries left to "
            "re-check "
            f"(~{-(-answer['round_left'] // 1000)} more call(s)); run without --once for a "
            "whole round"
        )
    console(wide).print(Panel.fit(text, title="audit chain intact", style="green"))
    return 0


def _print(listed: list[dict], name: str, asked: str | None, as_json: bool, wide: bool) -> int:
    """Print entries named by ``name`` (seq or ref); 1 if the one ``asked`` is not there."""
    if asked is not None and not listed:
        console(stderr=True).print(
            f"audit entry {safe(asked)} is not there or not about your policies"
        )
        return 1
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return 0
    table = Table(name, "time (UTC)", "kind", "subject", "outcome", "detail", title="audit log")
    for e in listed:
        when = dt.datetime.fromtimestamp(e["at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        style = {"rejected": "red", "accepted": "green"}.get(e["outcome"], "")
        table.add_row(
            safe(e.get(name, e.get("seq", "?"))),  # a CAS of an earlier release answers seq
            when,
            safe(e["kind"]),
            safe(e["subject"]),
            f"[{style}]{safe(e['outcome'])}[/]" if style else safe(e["outcome"]),
            safe(_summary(e["kind"], e["detail"], full=wide_output(wide))),
        )
    console(wide).print(table)
    return 0


def _summary(kind: str, detail: dict, *, full: bool = False) -> str:
    if kind == audit_log.AuditKind.ATTESTATION:
        parts = []
        if detail.get("simulated"):
            parts.append("SIMULATED")
        if detail.get("mrenclave"):
            mrenclave = detail["mrenclave"]
            parts.append(f"MRENCLAVE {mrenclave if full else mrenclave[:12] + '…'}")
        parts.extend(str(reason) for reason in detail.get("reasons", []))
        return "; ".join(parts)
    policy_hash = str(detail.get("policy_hash"))
    return f"v{detail.get('version')} {policy_hash if full else policy_hash[:12] + '…'}"
