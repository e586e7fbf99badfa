"""``sgxcloud cleanroom console``: one party's web console on 127.0.0.1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from sgxcloud.errors import InputError


def _local_defaults(workdir: Path, party: str) -> dict[str, str | None]:
    """Paths of a ``cleanroom init`` directory: its definition, the party's key,
    where a provider's approval goes, and the running coordinator's URL."""
    try:
        doc = json.loads((workdir / "local.json").read_text())
        definition = str(workdir / doc["definition"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{workdir / 'local.json'}: missing or not JSON "
            "(give a directory made by 'sgxcloud cleanroom init')"
        ) from exc
    return {
        "definition": definition,
        "key": str(workdir / "keys" / f"{party}.pem"),
        "approval_out": str(workdir / "approvals" / f"{party}.json"),
        "url": _local_url(workdir),
    }


def _local_url(workdir: Path) -> str | None:
    """The URL of the coordinator `cleanroom local` runs from ``workdir`` now."""
    try:
        info = json.loads((workdir / "run" / "coordinator.ready").read_text())
        return f"https://{info['host']}:{info['port']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


@click.command("console")
@click.option("--party", required=True, help="Your party name in the definition.")
@click.option(
    "--key",
    type=click.Path(dir_okay=False),
    help="Your Ed25519 private key (PEM); it never leaves this process.",
)
@click.option(
    "--definition", type=click.Path(dir_okay=False), help="The collaboration definition (YAML)."
)
@click.option(
    "--url",
    envvar="SGXCLOUD_CLEANROOM_URL",
    help="Coordinator API, https://HOST:PORT (or SGXCLOUD_CLEANROOM_URL).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, exists=True),
    help="A directory made by 'cleanroom init' (and running 'cleanroom local'): "
    "definition, key, approval file and URL are taken from it.",
)
@click.option(
    "--approval-out",
    type=click.Path(dir_okay=False),
    help="Providers: where an approval signed in the console is saved.",
)
@click.option(
    "--port",
    default=0,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port on 127.0.0.1 (0: any free port). The console never listens on another address.",
)
@click.option(
    "--collateral",
    type=click.Path(exists=True, dir_okay=False),
    help="DCAP collateral file for verifying the coordinator's quotes.",
)
@click.option("--pccs", metavar="URL", help="PCCS to fetch DCAP collateral from (cached).")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the console URL as JSON (it carries the access token).",
)
@click.option("--ready-file", hidden=True)
def console(
    party, key, definition, url, workdir, approval_out, port, collateral, pccs, as_json, ready_file
) -> int:
    """Serve your party's web console on 127.0.0.1 (runs until stopped).

    The printed URL carries a one-time access token: open it in a browser on
    this machine.  The page shows the definition and its approvals,
    ingestion, a query builder limited to what the definition allows you,
    results with charts, verification and export, your privacy budget and the
    audit log with its hash chain checked.
    """
    from sgxcloud.cleanroom.console import PartySession
    from sgxcloud.cleanroom.console.server import bind, serve
    from sgxcloud.cli.cleanroom import _collateral, _definition, _key
    from sgxcloud.cli.cleanroom import console as out
    from sgxcloud.cli.output import safe

    explicit_url = url
    if workdir:
        defaults = _local_defaults(Path(workdir), party)
        definition = definition or defaults["definition"]
        key = key or defaults["key"]
        url = url or defaults["url"]
    if not definition or not key:
        raise InputError("give --definition and --key (or --workdir)")
    if not url:
        raise InputError(
            "give --url (or set SGXCLOUD_CLEANROOM_URL, or --workdir of a "
            "running 'cleanroom local')"
        )
    if not Path(key).is_file():
        raise InputError(f"cannot read key {key}: no such file")
    defn = _definition(definition)
    if workdir and not approval_out and party in defn.providers:
        approval_out = defaults["approval_out"]
    locate = None
    if workdir and not explicit_url:
        locate = lambda: _local_url(Path(workdir))  # noqa: E731 (follows local restarts)
    session = PartySession(
        url,
        defn,
        party,
        _key(key),
        collateral_source=_collateral(collateral, pccs),
        approval_out=Path(approval_out) if approval_out else None,
        locate=locate,
    )
    sock = bind(port)

    def ready(guard) -> None:
        link = guard.url()
        try:
            client = session.client()
            reach = (
                "coordinator attested ([bold red]SIMULATED[/])"
                if client.simulated
                else "coordinator attested"
            )
        except Exception as exc:  # shown, not fatal: the page retries
            reach = f"[yellow]coordinator not reachable yet: {safe(exc)}[/]"
        if as_json:
            click.echo(json.dumps({"url": link, "party": party, "port": guard.port}))
        else:
            out.print(f"console for {safe(party)}: {reach}", highlight=False)
            out.print(
                f"open [bold]{safe(link)}[/] (this machine only; Ctrl-C stops)",
                highlight=False,
                soft_wrap=True,
            )
        if ready_file:
            fd = os.open(ready_file + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps({"url": link, "port": guard.port, "pid": os.getpid()}))
            os.replace(ready_file + ".tmp", ready_file)

    try:
        serve(session, sock, on_ready=ready)
    finally:
        session.drop()
    return 0
