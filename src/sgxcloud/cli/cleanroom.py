"""``sgxcloud cleanroom``: one command per role.

providers: ``keygen``, ``approve``, ``node check``, ``node`` (serve),
``refresh``; operators: ``coordinator``, ``local``; analysts: ``query``,
``match-rate``, ``status``, ``budget``; recipients and everyone:
``verify-result``, ``audit``, ``public-key``.  Commands are thin: the library does
the work, these only parse options and render.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from sgxcloud.bounded import printable
from sgxcloud.cli.output import console as output_console
from sgxcloud.cli.output import safe
from sgxcloud.errors import InputError

console = output_console()  # full values when piped (cli/output.py)


def _emit(as_json: bool, doc: Any, render=None) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))
    elif render:
        render(doc)
    else:
        console.print_json(data=doc)


def _definition(path: str):
    from sgxcloud.cleanroom.definition import load_definition

    return load_definition(path)


def _privacy_warnings(d) -> list[str]:
    """Say loudly, on stderr (so --json output stays clean), what the definition's
    privacy settings do not protect."""
    found = d.privacy.warnings()
    for text in found:
        click.secho(f"WARNING: {text}", fg="red", bold=True, err=True)
    return found


def _key(path: str):
    from sgxcloud.cleanroom.approvals import private_key_from_pem

    try:
        return private_key_from_pem(Path(path).read_bytes())
    except OSError as exc:
        raise InputError(f"cannot read key {path}: {exc.strerror}") from exc


def _pairs(specs: tuple[str, ...], option: str, shape: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` option values, split; a value without ``=`` is one clear error."""
    pairs = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep:
            raise InputError(f"{option} {spec!r}: expected {shape}")
        pairs.append((key, value))
    return pairs


def _approvals(paths: tuple[str, ...]):
    from sgxcloud.cleanroom.approvals import Approval

    approvals = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read approval file {path}") from exc
        for item in doc if isinstance(doc, list) else [doc]:
            approvals.append(Approval.from_dict(item))
    return approvals


def _collateral(collateral: str | None, pccs: str | None):
    """DCAP collateral for verifying real quotes: a file, or a PCCS with a cache."""
    if collateral and pccs:
        raise InputError("give --collateral or --pccs, not both")
    if collateral:
        from sgxcloud.cas.collateral import FileCollateral

        return FileCollateral(collateral)
    if pccs:
        from sgxcloud.cas.collateral import PccsCollateral

        return PccsCollateral(pccs, Path.home() / ".cache" / "sgxcloud" / "pccs")
    return None


def _collateral_options(f):
    f = click.option("--pccs", metavar="URL", help="PCCS to fetch DCAP collateral from (cached).")(
        f
    )
    return click.option(
        "--collateral",
        type=click.Path(exists=True, dir_okay=False),
        help="DCAP collateral file for verifying peers' quotes.",
    )(f)


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def _ready(path: str | None, doc: dict[str, Any]) -> None:
    """Tell a supervisor (``local``, tests) where we listen, atomically."""
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)


def _allow_simulated_option(f):
    return click.option(
        "--allow-simulated",
        is_flag=True,
        help="Accept SIMULATED peers (demos and tests only). Needed on top of the "
        "definition's enclaves.allow_simulated: the definition alone is never enough.",
    )(f)


def _simulation_banner(definition, allow_simulated: bool) -> None:
    """Say loudly, on stderr, that this process trusts SIMULATED peers."""
    from rich.panel import Panel

    from sgxcloud.cleanroom.transport.trust import SIMULATION_WARNING

    err = Console(stderr=True)
    if allow_simulated and definition.enclaves.allow_simulated:
        err.print(Panel(SIMULATION_WARNING, title="WARNING: --allow-simulated", style="bold red"))
    elif allow_simulated:
        err.print(
            "[yellow]--allow-simulated has no effect: the definition requires SGX "
            "hardware (enclaves.allow_simulated is false)[/]"
        )
    elif definition.enclaves.allow_simulated:
        err.print(
            "[yellow]the definition allows SIMULATED enclaves; this process still "
            "refuses them (start it with --allow-simulated for a demo)[/]"
        )


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


@click.group("cleanroom")
def cleanroom() -> None:
    """Confidential data clean room: providers, coordinator, analysts, recipients."""


@cleanroom.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--people",
    default=20_000,
    show_default=True,
    type=click.IntRange(1),
    help="Synthetic population size.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "csv"]),
    default="parquet",
    show_default=True,
    help="Provider file format.",
)
@click.option(
    "--hardware",
    is_flag=True,
    help="Write allow_simulated: false (nodes then refuse SIMULATED peers).",
)
@click.option("--json", "as_json", is_flag=True)
def init(directory: str, people: int, fmt: str, hardware: bool, as_json: bool) -> int:
    """Start a collaboration from the worked example: a key per party, the
    definition with those keys, every provider's approval, synthetic data and
    local.json for `sgxcloud cleanroom local`."""
    from rich.progress import BarColumn, Progress, TextColumn

    from sgxcloud.cleanroom.definition import budget_summary
    from sgxcloud.cleanroom.local import prepare_example

    target = Path(directory)
    if target.exists() and any(target.iterdir()):
        raise InputError(f"{directory} is not empty")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task(f"generating data for {people:,} people", total=people)
        collab = prepare_example(
            target,
            people=people,
            fmt=fmt,
            allow_simulated=not hardware,
            progress=lambda done, _total: bar.update(task, completed=done),
        )
    # init signs every provider's approval: say what the definition does not protect
    definition = _definition(str(collab.definition))
    warnings = _privacy_warnings(definition)
    dp = definition.privacy.dp
    doc = {
        "privacy": budget_summary(dp) if dp is not None and dp.enabled else "DP off",
        "directory": str(target),
        "definition": str(collab.definition),
        "approvals": [str(a) for a in collab.approvals],
        "keys": str(target / "keys"),
        "datasets": collab.nodes,
        "warnings": warnings,
    }

    def render(d):
        console.print(f"definition: {safe(d['definition'])}")
        console.print(f"keys: {safe(d['keys'])} (one per party; keep them private)")
        console.print(f"approvals: {safe(', '.join(d['approvals']))}")
        console.print(d["privacy"], highlight=False)
        console.print(f"next: [bold]sgxcloud cleanroom local --workdir {safe(directory)}[/]")

    _emit(as_json, doc, render)
    return 0


@cleanroom.command()
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the private key (PEM, mode 0600).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def keygen(out: str, as_json: bool) -> int:
    """Make a party's Ed25519 key; put the printed public key in the definition."""
    import os

    from sgxcloud.cleanroom.approvals import (
        encode_public_key,
        generate_private_key,
        private_key_to_pem,
    )

    key = generate_private_key()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise InputError(f"{out} exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_key_to_pem(key))
    _emit(
        as_json,
        {"private_key": out, "public_key": encode_public_key(key)},
        lambda d: console.print(f"public key: [bold]{safe(d['public_key'])}[/]"),
    )
    return 0


@cleanroom.command()
@click.option("--definition", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--party", required=True, help="Your party name in the definition.")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def approve(definition: str, party: str, key_path: str, out: str, as_json: bool) -> int:
    """Sign your approval of a definition and the enclaves it pins."""
    from sgxcloud.cleanroom.approvals import approve as sign

    d = _definition(definition)
    approval = sign(d, party, _key(key_path))
    warnings = _privacy_warnings(d)  # what was approved; a refusal stays one line
    Path(out).write_text(json.dumps(approval.to_dict(), indent=2) + "\n")
    doc = {
        "party": party,
        "definition_hash": d.definition_hash(),
        "coordinator_mrenclave": d.enclaves.coordinator.mrenclave,
        "node_mrenclave": d.enclaves.node.mrenclave,
        "approval": out,
        "warnings": warnings,
    }
    _emit(
        as_json,
        doc,
        lambda x: console.print(
            f"{safe(party)} approved definition {safe(x['definition_hash'][:16])}… "
            f"(coordinator {safe(x['coordinator_mrenclave'][:16])}…) → {safe(out)}"
        ),
    )
    return 0


class _NodeGroup(click.Group):
    """``node`` serves (as it always did) unless a sub-command is named:
    ``node --definition …`` and ``node serve --definition …`` are the same."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


@cleanroom.group(cls=_NodeGroup)
def node() -> None:
    """A data provider's node: `serve` your data to the attested coordinator, or
    `check` your files first (nothing leaves this machine)."""


@node.command("check")
@click.option("--definition", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--provider", required=True, help="Your provider name in the definition.")
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    required=True,
    metavar="NAME=SOURCE",
    help="A dataset and its file: x.csv, x.parquet or x.duckdb:TABLE. Repeatable.",
)
@click.option(
    "--max-invalid-fraction",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="The node's limit of rows with unusable identifiers.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def node_check(definition, provider, datasets, max_invalid_fraction, as_json) -> int:
    """Dry run over your own files before anything leaves this machine: schema and
    types, time zones, identifier validity, duplicates, empty columns — with line
    numbers and example values (shown here only; never sent). Exit 1 on errors."""
    from sgxcloud.cleanroom.check import check_provider
    from sgxcloud.cleanroom.node import Source

    d = _definition(definition)
    if provider not in d.providers:
        raise InputError(
            f"{provider} is not a data provider in this definition; providers: "
            + ", ".join(d.providers)
        )
    sources = {
        name: Source.parse(path) for name, path in _pairs(datasets, "--dataset", "NAME=SOURCE")
    }
    declared = [ds.name for ds in d.datasets_of(provider)]
    unknown = sorted(set(sources) - set(declared))
    if unknown:
        raise InputError(
            f"dataset(s) {', '.join(unknown)} are not declared for {provider}; "
            f"its datasets: {', '.join(declared)}"
        )
    report = check_provider(d, provider, sources, max_invalid_fraction)
    _emit(as_json, report.to_dict(), _render_check)
    return 0 if report.ok else 1


def _render_check(doc: dict[str, Any]) -> None:
    marks = {"error": "[bold red]error[/]", "warning": "[yellow]warning[/]", "info": "[dim]info[/]"}
    for ds in doc["datasets"]:
        verdict = (
            "[green]ready[/]"
            if not ds["errors"]
            else f"[bold red]{ds['errors']} error(s): the node would refuse it[/]"
        )
        console.print(
            f"[bold]{safe(ds['dataset'])}[/] ← {safe(ds['source'] or '(no file)')}: "
            f"{ds['rows']:,} rows, {verdict}",
            highlight=False,
        )
        for f in ds["findings"]:
            where = next((k for k in ("lines", "rows") if f.get(k)), None)
            column = f"{safe(f['column'])}: " if f["column"] else ""
            count = f"{f['count']:,} " if f["count"] and not f["message"][0].isdigit() else ""
            line = f"  {marks[f['severity']]} {column}{count}{safe(f['message'])}"
            if where:
                more = "…" if f["count"] > len(f[where]) else ""
                line += (
                    f" ({where[:-1] if len(f[where]) == 1 else where} "
                    f"{', '.join(map(str, f[where]))}{more})"
                )
            console.print(line, highlight=False, markup=True)
            for n, example in zip(f.get(where) or [], f["examples"], strict=False):
                console.print(
                    f"      {where[:-1] if where else 'row'} {n}: {printable(repr(example))}",
                    highlight=False,
                    markup=False,
                )
    console.print(
        "[green]every dataset is ready to be served[/]"
        if doc["ok"]
        else "[bold red]fix the errors above before serving[/] "
        "(values shown here never leave this machine)"
    )


@node.command("serve")
@click.option("--definition", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--provider", required=True, help="The provider this node serves.")
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    required=True,
    metavar="NAME=SOURCE",
    help="A dataset and its file: x.csv, x.parquet or x.duckdb:TABLE. Repeatable.",
)
@click.option(
    "--approvals",
    "approval_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Approval files known locally (the coordinator also presents its own).",
)
@click.option("--listen", default="127.0.0.1:7401", show_default=True)
@click.option(
    "--simulate",
    is_flag=True,
    help="Use SIMULATED attestation (no SGX). Peers refuse it unless allowed.",
)
@click.option("--simulate-mrenclave", hidden=True, help="Tests: claim another MRENCLAVE.")
@_allow_simulated_option
@click.option("--batch-rows", default=65_536, show_default=True, type=click.IntRange(1))
@click.option(
    "--max-invalid-fraction",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Refuse a dataset when more rows than this have unusable identifiers.",
)
@click.option(
    "--coordinator",
    "coordinator_signer",
    metavar="SIGNER",
    help="Serve only the coordinator with this result-signing key (ed25519:..., "
    "as 'cleanroom status' shows it); default: any attested coordinator "
    "of this definition.",
)
@_collateral_options
@click.option("--ready-file", hidden=True)
@click.option("-v", "--verbose", is_flag=True, help="Log sessions and refusals.")
def node_serve(
    definition,
    provider,
    datasets,
    approval_files,
    listen,
    simulate,
    simulate_mrenclave,
    allow_simulated,
    batch_rows,
    max_invalid_fraction,
    coordinator_signer,
    collateral,
    pccs,
    ready_file,
    verbose,
) -> int:
    """Serve your own data to the attested coordinator (runs until stopped)."""
    from sgxcloud.cleanroom.node import NodeConfig, ProviderNode, Source
    from sgxcloud.cleanroom.workdir import private_umask

    private_umask()  # anything this process writes is the owner's alone

    _logging(verbose)
    sources = {
        name: Source.parse(path) for name, path in _pairs(datasets, "--dataset", "NAME=SOURCE")
    }
    host, port = _hostport(listen)
    loaded = _definition(definition)
    server = ProviderNode(
        NodeConfig(
            provider=provider,
            definition=loaded,
            sources=sources,
            approvals=_approvals(approval_files),
            simulate=simulate,
            simulate_mrenclave=simulate_mrenclave,
            allow_simulated=allow_simulated,
            batch_rows=batch_rows,
            max_invalid_fraction=max_invalid_fraction,
            coordinator=coordinator_signer,
            collateral_source=_collateral(collateral, pccs),
        ),
        host,
        port,
    )
    _privacy_warnings(loaded)  # once the arguments are good: a mistake stays one line
    _simulation_banner(loaded, allow_simulated)
    bound = server.address
    label = " [bold red]SIMULATED attestation[/]" if simulate else ""
    console.print(
        f"node {safe(provider)} listening on {safe(bound[0])}:{bound[1]}{label}", highlight=False
    )
    _ready(ready_file, {"host": bound[0], "port": bound[1], "pid": __import__("os").getpid()})
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    return 0


@cleanroom.command()
@click.option("--definition", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--approvals",
    "approval_files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
)
@click.option("--node", "nodes", multiple=True, required=True, metavar="PROVIDER=HOST:PORT")
@click.option("--workdir", required=True, type=click.Path(file_okay=False))
@click.option("--listen", default="127.0.0.1:8443", show_default=True)
@click.option("--simulate", is_flag=True, help="Use SIMULATED attestation (no SGX).")
@click.option("--simulate-mrenclave", hidden=True)
@_allow_simulated_option
@click.option(
    "--memory-limit",
    default="512MB",
    show_default=True,
    help="DuckDB memory limit inside the enclave (EPC is scarce).",
)
@click.option("--batch-rows", default=65_536, show_default=True, type=click.IntRange(1))
@click.option(
    "--max-query-bytes",
    default=64 << 10,
    show_default=True,
    type=click.IntRange(1024, 16 << 20),
    help="Largest query body accepted (larger ones: 413, before reading them).",
)
@click.option(
    "--max-connections",
    default=256,
    show_default=True,
    type=click.IntRange(1),
    help="Connections held at once, TLS handshakes included; one more takes the "
    "slot of a connection slow to send its request, or is closed.",
)
@click.option(
    "--max-connections-per-client",
    default=16,
    show_default=True,
    type=click.IntRange(0),
    metavar="N",
    help="Connections one client address (IPv6: /64) may hold at once; 0: no "
    "per-client limit (behind a proxy that hides client addresses).",
)
@click.option(
    "--response-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 3600, min_open=True),
    metavar="SECONDS",
    help="A client that leaves its answers unread this long loses the connection.",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve Prometheus GET /metrics over HTTP here; loopback addresses only "
    "(127.0.0.1:PORT). Off by default; never on the API's port.",
)
@_collateral_options
@click.option("--ready-file", hidden=True)
@click.option("-v", "--verbose", is_flag=True)
def coordinator(
    definition,
    approval_files,
    nodes,
    workdir,
    listen,
    simulate,
    simulate_mrenclave,
    allow_simulated,
    memory_limit,
    batch_rows,
    max_query_bytes,
    max_connections,
    max_connections_per_client,
    response_timeout,
    metrics_listen,
    collateral,
    pccs,
    ready_file,
    verbose,
) -> int:
    """Pull approved data from the nodes and serve the HTTPS API (runs until stopped)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from sgxcloud.cleanroom.coordinator import Coordinator, CoordinatorConfig, serve
    from sgxcloud.cleanroom.coordinator.metrics import check_metrics_address
    from sgxcloud.cleanroom.workdir import private_umask

    metrics_at = _hostport(metrics_listen) if metrics_listen else None
    if metrics_at:
        check_metrics_address(metrics_at[0])  # before hours of ingestion, not after

    private_umask()  # DuckDB's and SQLite's files in the workdir: owner only

    _logging(verbose)
    node_map = {
        provider: _hostport(address)
        for provider, address in _pairs(nodes, "--node", "PROVIDER=HOST:PORT")
    }
    loaded = _definition(definition)
    coord = Coordinator(
        CoordinatorConfig(
            definition=loaded,
            workdir=Path(workdir),
            nodes=node_map,
            approvals=_approvals(approval_files),
            simulate=simulate,
            simulate_mrenclave=simulate_mrenclave,
            allow_simulated=allow_simulated,
            memory_limit=memory_limit,
            batch_rows=batch_rows,
            collateral_source=_collateral(collateral, pccs),
        )
    )
    _simulation_banner(loaded, allow_simulated)
    if simulate:
        console.print("[bold red]SIMULATED attestation: no SGX hardware, no security[/]")
    _privacy_warnings(coord.config.definition)
    approvals = coord.approval_status()
    if not approvals["complete"]:
        console.print(
            f"[yellow]approvals incomplete: missing {safe(approvals['missing'])}, "
            f"invalid {safe(approvals['invalid'])}; nodes will refuse[/]"
        )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(kind: str, info: dict[str, Any]) -> None:
            ref = info["dataset"]
            if ref not in tasks:
                tasks[ref] = bar.add_task(f"ingest {ref}", total=None)
            if kind == "receive":
                bar.update(tasks[ref], completed=info["bytes"])

        coord.ingest_all(progress)
    table = Table(title="datasets")
    for col in ("dataset", "state", "rows", "reason"):
        table.add_column(col)
    for st in coord.status().values():
        table.add_row(
            safe(st["dataset"]),
            safe(st["state"]),
            safe(st.get("rows", 0)),
            safe(st.get("reason", "")),  # a node's or a file's words
        )
    console.print(table)
    host, port = _hostport(listen)

    def ready(bound_port: int, metrics_port: int | None) -> None:
        console.print(f"coordinator API on https://{safe(host)}:{bound_port}", highlight=False)
        doc = {"host": host, "port": bound_port, "status": coord.status()}
        if metrics_at and metrics_port:
            doc["metrics"] = f"http://{metrics_at[0]}:{metrics_port}/metrics"
            console.print(f"metrics on {safe(doc['metrics'])}", highlight=False)
        _ready(ready_file, doc)

    from sgxcloud.web.limits import RequestLimits

    try:
        serve(
            coord,
            host,
            port,
            on_ready=ready,
            max_query_bytes=max_query_bytes,
            limits=RequestLimits(
                max_connections=max_connections,
                max_connections_per_client=max_connections_per_client,
                response_timeout_s=response_timeout,
            ),
            metrics_listen=metrics_at,
        )
    finally:
        coord.close()
    return 0


def _client(url: str | None, definition: str, party: str, key: str, collateral=None, pccs=None):
    from sgxcloud.cleanroom.sdk import CleanroomClient

    if not url:
        raise InputError("give --url https://HOST:PORT or set SGXCLOUD_CLEANROOM_URL")
    return CleanroomClient.connect(
        url,
        _definition(definition),
        party,
        _key(key),
        collateral_source=_collateral(collateral, pccs),
    )


def _client_options(f):
    for option in reversed(
        [
            click.option(
                "--url",
                envvar="SGXCLOUD_CLEANROOM_URL",
                show_envvar=True,
                help="Coordinator API, https://HOST:PORT.",
            ),
            click.option(
                "--definition", required=True, type=click.Path(exists=True, dir_okay=False)
            ),
            click.option("--party", required=True, help="Your party name."),
            click.option(
                "--key",
                required=True,
                type=click.Path(exists=True, dir_okay=False),
                help="Your Ed25519 private key (PEM).",
            ),
            click.option("--json", "as_json", is_flag=True),
        ]
    ):
        f = option(f)
    return _collateral_options(f)


@cleanroom.command()
@_client_options
@click.option(
    "--file",
    "query_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A query document (JSON).",
)
@click.option("--template", type=click.Choice(["audience_size", "overlap", "campaign_lift"]))
@click.option("--analysis", help="The analysis name in the definition.")
@click.option("--filter", "filter_text", help='e.g. "bank.customers.premium_card = true".')
@click.option("--breakdown", help="campaign_lift: an allowed attribute.")
@click.option("--datasets", help="overlap: comma-separated provider.dataset names.")
@click.option("--out", type=click.Path(dir_okay=False), help="Save the signed result bundle.")
@click.option("--html", type=click.Path(dir_okay=False), help="campaign_lift: HTML report.")
@click.option("--all", "show_all", is_flag=True, help="Show every segment of a long breakdown.")
def query(
    url,
    definition,
    party,
    key,
    as_json,
    collateral,
    pccs,
    query_file,
    template,
    analysis,
    filter_text,
    breakdown,
    datasets,
    out,
    html,
    show_all,
) -> int:
    """Run a query as an analyst; prints the verified, released numbers.  With
    --json it prints the signed result bundle, which `verify-result` accepts."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if query_file:
        try:
            doc = json.loads(Path(query_file).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{query_file}: not a JSON query document") from exc
    else:
        if not template or not analysis:
            raise InputError("give --file, or --template and --analysis")
        doc = {"template": template, "analysis": analysis}
        if filter_text:
            doc["filter"] = filter_text
        if breakdown:
            doc["breakdown"] = breakdown
        if datasets:
            doc["datasets"] = [d.strip() for d in datasets.split(",")]
    with (
        _client(url, definition, party, key, collateral, pccs) as client,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=as_json,
        ) as bar,
    ):
        bar.add_task(f"running {doc.get('template')} in the enclave", total=None)
        verified = client.query(doc)
    if out:
        Path(out).write_text(verified.to_json() + "\n")
    if html:
        from sgxcloud.cleanroom.report import write_lift_report

        write_lift_report(verified.result, html, simulated=verified.simulated)
    _emit(as_json, verified.bundle, lambda _: render_result(verified, show_all=show_all))
    return 0


SEGMENTS_SHOWN = 8
"""Segments of a breakdown shown before the rest is collapsed (``--all`` shows every one)."""


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.2f}"


def _shown_value(result, cell) -> str:
    """A released value as people should read it: suppression marked, and every
    noised figure with the noise in it (± its 95% margin, or an interval)."""
    from sgxcloud.cleanroom.report import noise_interval, noise_margin

    if cell.suppressed:
        return "[yellow]suppressed (< k)[/]"
    text = _number(cell.value)
    if not cell.noisy:
        return text
    margin = noise_margin(result, cell)
    if margin is not None:
        text += (
            f" ± {margin:,.1f}" if isinstance(cell.value, int) else f" ± {_number(float(margin))}"
        )
        if isinstance(cell.value, int | float) and margin > abs(cell.value):
            text += " [yellow](noise larger than the figure)[/]"
        return text + " [dim](DP 95%)[/]"
    interval = noise_interval(result, cell)
    if interval is not None:
        return text + f" [{_number(interval[0])}, {_number(interval[1])}] [dim](DP 95%)[/]"
    return text + " [dim](from DP figures)[/]"


def render_result(verified, target: Console | None = None, *, show_all: bool = False) -> None:
    """A result as a table: suppressed cells and SIMULATED clearly marked, each
    noised figure with its noise, long breakdowns collapsed unless ``show_all``."""
    result = verified.result
    out = target or console
    title = safe(f"{result.template} · {result.analysis} · result {result.result_id[:8]}")
    table = Table(title=title)
    dims = sorted({k for c in result.cells for k in c.dims})
    for col in (*dims, "metric", "value"):
        table.add_column(safe(col), justify="right" if col == "value" else "left")
    segments = list(dict.fromkeys(c.dims["segment"] for c in result.cells if "segment" in c.dims))
    shown = segments if show_all else segments[:SEGMENTS_SHOWN]
    for cell in result.cells:
        if "segment" in cell.dims and cell.dims["segment"] not in shown:
            continue
        table.add_row(
            # categories are the providers' data: shown as written, never as markup
            *(safe(cell.dims.get(d, "")) for d in dims),
            safe(cell.metric),
            _shown_value(result, cell),
        )
    out.print(table)
    hidden = len(segments) - len(shown)
    if hidden:
        out.print(
            f"{hidden} more segment(s) not shown: --all shows them, --json gives the "
            "whole signed bundle, --html a report",
            highlight=False,
        )
    dp = (result.privacy or {}).get("differential_privacy")
    if dp:
        out.print(
            f"differential privacy: {safe(dp.get('mechanism'))} noise, "
            f"ε={safe(dp.get('epsilon'))} for "
            "this query; ± is the 95% margin of the noise in a figure (sampling error "
            "comes on top); lifts and p-values are computed from the noised figures",
            highlight=False,
        )
    note = (
        "[bold red]signed by a SIMULATED enclave[/]"
        if verified.simulated
        else "[green]signed by the attested coordinator enclave[/]"
    )
    out.print(f"signature verified; {note}")


@cleanroom.command("verify-result")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--definition", required=True, type=click.Path(exists=True, dir_okay=False))
@_collateral_options
@click.option("--json", "as_json", is_flag=True)
@click.option("--all", "show_all", is_flag=True, help="Show every segment of a long breakdown.")
def verify_result_cmd(
    bundle: str, definition: str, collateral, pccs, as_json: bool, show_all: bool
) -> int:
    """Verify a result bundle offline: exit 0 if valid, 1 if not."""
    from sgxcloud.cleanroom.errors import CleanroomError
    from sgxcloud.cleanroom.sdk import verify_bundle
    from sgxcloud.cleanroom.transport import TransportError

    d = _definition(definition)
    try:
        text = Path(bundle).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read result bundle {bundle}: not a readable text file") from exc
    try:
        verified = verify_bundle(text, d, _collateral(collateral, pccs))
    except (CleanroomError, TransportError) as exc:
        _emit(
            as_json,
            {"valid": False, "reason": str(exc)},
            lambda x: console.print(f"[bold red]INVALID[/]: {safe(x['reason'])}"),
        )
        return 1
    doc = {
        "valid": True,
        "result_id": verified.result.result_id,
        "definition_hash": verified.result.definition_hash,
        "signer": verified.result.signer,
        "simulated": verified.simulated,
    }
    _emit(as_json, doc, lambda _: render_result(verified, show_all=show_all))
    return 0


def _render_datasets(datasets: list[dict[str, Any]], title: str) -> None:
    table = Table(title=safe(title))
    for col in ("dataset", "state", "rows in use", "reason"):
        table.add_column(col, justify="right" if col == "rows in use" else "left")
    colours = {"ingested": "green", "rejected": "red", "failed": "red", "unavailable": "yellow"}
    for st in datasets:
        colour = colours.get(st["state"], "white")
        # another provider's dataset comes without counts (not released to us)
        rows = f"{st['rows']:,}" if isinstance(st.get("rows"), int) else "–"
        table.add_row(
            safe(st["dataset"]),
            f"[{colour}]{safe(st['state'])}[/]",
            rows,
            safe(st.get("reason", "")),  # a node's or a file's words
        )
    console.print(table)


def _approvals_line(approvals: dict[str, Any]) -> str:
    if approvals.get("complete"):
        valid = safe(", ".join(approvals.get("valid", [])))
        return f"approvals: [green]complete[/] ({valid})"
    parts = [
        f"missing: {safe(', '.join(approvals['missing']))}" if approvals.get("missing") else "",
        f"invalid: {safe(', '.join(approvals['invalid']))}" if approvals.get("invalid") else "",
    ]
    return (
        "approvals: [red]incomplete[/] — "
        + "; ".join(p for p in parts if p)
        + " (nodes refuse to send data until every provider approved)"
    )


@cleanroom.command()
@_client_options
def status(url, definition, party, key, as_json, collateral, pccs) -> int:
    """Approvals and dataset ingestion state, from the attested coordinator."""
    with _client(url, definition, party, key, collateral, pccs) as client:
        # The signer its evidence binds: what a node's --coordinator pins.
        doc = {**client.status(), "coordinator": str(client.attestation["signer"])}

    def render(d):
        _render_datasets(d["datasets"], "datasets" + (" (SIMULATED)" if d["simulated"] else ""))
        console.print(_approvals_line(d["approvals"]), highlight=False)
        pooled = d.get("dp_budget")
        if pooled:
            console.print(
                f"DP budget of the collaboration (every analyst together): ε spent "
                f"{pooled['spent']:.4g} of {pooled['total']:.4g}, {pooled['remaining']:.4g} left",
                highlight=False,
            )
        console.print(f"definition {safe(d['definition_hash'])}", highlight=False)
        console.print(
            f"coordinator {safe(d['coordinator'])} (attested result signer)", highlight=False
        )

    _emit(as_json, doc, render)
    return 0


@cleanroom.command()
@_client_options
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    metavar="NAME",
    help="Only this dataset (repeatable); default: all of yours.",
)
def refresh(url, definition, party, key, as_json, collateral, pccs, datasets) -> int:
    """(Data providers) have the coordinator pull your datasets again after you
    fixed or updated a file.  A rejected pull keeps the previous data in use.
    Exit 1 if any dataset was not ingested."""
    with _client(url, definition, party, key, collateral, pccs) as client:
        doc = client.refresh(list(datasets) or None)
    _emit(as_json, doc, lambda d: _render_datasets(d["datasets"], f"{party}: datasets pulled"))
    return 0 if all(d["state"] == "ingested" for d in doc["datasets"]) else 1


@cleanroom.command()
@_client_options
def budget(url, definition, party, key, as_json, collateral, pccs) -> int:
    """Your remaining differential-privacy budget."""
    with _client(url, definition, party, key, collateral, pccs) as client:
        doc = client.budget()

    def render(d):
        if not d["total"]:
            console.print(
                f"{safe(d['analyst'])}: differential privacy is off in this collaboration "
                "(no budget is spent)",
                highlight=False,
            )
            return
        console.print(
            f"{safe(d['analyst'])}: ε spent {d['spent']:.4g} of {d['total']:.4g}; "
            f"[bold]{d['remaining']:.4g} remaining[/]",
            highlight=False,
        )
        if d.get("delta_total"):
            console.print(
                f"{d['analyst']}: δ spent {d['delta_spent']:.3g} of {d['delta_total']:.3g}",
                highlight=False,
            )
        pooled = d.get("collaboration")
        if pooled:
            console.print(
                f"collaboration (every analyst together): ε spent {pooled['spent']:.4g} "
                f"of {pooled['total']:.4g}; [bold]{pooled['remaining']:.4g} remaining[/]"
                + (
                    f"; δ spent {pooled['delta_spent']:.3g} of {pooled['delta_total']:.3g}"
                    if pooled.get("delta_total")
                    else ""
                ),
                highlight=False,
            )
            if d.get("available", d["remaining"]) < d["remaining"]:
                console.print(
                    f"[bold]{d['available']:.4g}[/] of yours can still be spent "
                    "(the collaboration's budget is the smaller)",
                    highlight=False,
                )

    _emit(as_json, doc, render)
    return 0


def _audit_summary(entry: dict[str, Any]) -> str:
    """One readable line for an audit entry's data (never truncated mid-value)."""
    data = entry.get("data") or {}
    event = entry.get("event")
    if event in ("ingest",):
        return f"{data.get('dataset')}: ingested"
    if event == "ingest_rejected":
        return (
            f"{data.get('dataset') or ', '.join(data.get('datasets', []))}: "
            f"{data.get('message', '')}"
        )
    if event == "query":
        q = data.get("query") or {}
        parts = [f"{q.get('template')} {q.get('analysis')}"]
        if q.get("datasets"):
            parts.append("datasets " + ", ".join(q["datasets"]))
        if q.get("breakdown"):
            parts.append(f"by {q['breakdown']}")
        if q.get("filter"):
            parts.append(
                "filter " + json.dumps(q["filter"], ensure_ascii=False, separators=(",", ":"))
            )
        return "; ".join(parts)
    if event == "release":
        to = ", ".join(data.get("recipients") or [])
        return (
            f"result {str(data.get('result_id', ''))[:8]} released to {to or '?'}, "
            f"{data.get('result_digest', '')}"
        )
    if event == "cache_hit":
        return f"same query as before: result {str(data.get('result_id', ''))[:8]} again"
    if event == "refusal":
        return f"{data.get('reason')}: {data.get('message', '')}"
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


@cleanroom.command()
@_client_options
def audit(url, definition, party, key, as_json, collateral, pccs) -> int:
    """The coordinator's audit log (every request, verdict and result digest; the
    figures only in results, for their recipients), with its hash chain verified
    here; exit 3 if the chain is broken."""
    with _client(url, definition, party, key, collateral, pccs) as client:
        trail = client.audit_verified()
    doc = {
        "chain": {"verified": True, "entries": len(trail.entries), "head": trail.head},
        "entries": trail.entries,
    }

    def render(d):
        table = Table(title="audit log")
        for col in ("seq", "at", "event", "actor", "what"):
            table.add_column(col, overflow="fold")
        for e in d["entries"]:
            table.add_row(
                safe(e.get("seq", "")),
                safe(str(e.get("at", ""))[:19].replace("T", " ")),
                safe(e.get("event", "")),
                safe(e.get("actor", "")),  # every party's words: shown, never obeyed
                safe(_audit_summary(e)),
            )
        console.print(table)
        console.print(
            f"[green]hash chain verified[/]: {d['chain']['entries']} entries, "
            f"head {safe(d['chain']['head'])}",
            highlight=False,
        )

    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        render(doc)
    return 0


@cleanroom.command("match-rate")
@_client_options
@click.option("--analysis", required=True, help="An overlap analysis of the definition.")
@click.option("--datasets", required=True, help="Two or three provider.dataset names.")
@click.option("--filter", "filter_text", help="Optional filter, as for `query`.")
def match_rate(
    url, definition, party, key, as_json, collateral, pccs, analysis, datasets, filter_text
) -> int:
    """How many of each dataset's people the other datasets also know, from an
    overlap query: released like any other result (suppressed below k, noised
    under differential privacy)."""
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    with _client(url, definition, party, key, collateral, pccs) as client:
        rates = client.match_rate(analysis, names, filter_text)
    doc = {"rates": rates.rates, "bundle": rates.verified.bundle}

    def render(d):
        table = Table(title=f"match rates · {safe(analysis)}")
        for col in ("matched in", "of", "matched", "of total", "rate"):
            table.add_column(col, justify="left" if col in ("matched in", "of") else "right")
        for r in d["rates"]:
            rate = "[yellow]suppressed (< k)[/]" if r["rate"] is None else f"{r['rate']:.1%}"
            if r["noisy"] and r["rate"] is not None:
                rate += " [dim](DP)[/]"
            table.add_row(
                safe(r["datasets"]), safe(r["of"]), _number(r["matched"]), _number(r["total"]), rate
            )
        console.print(table)
        note = (
            "[bold red]SIMULATED enclave[/]"
            if rates.verified.simulated
            else "[green]attested coordinator enclave[/]"
        )
        console.print(f"from result {safe(rates.verified.result.result_id)}, signed by the {note}")

    _emit(as_json, doc, render)
    return 0


@cleanroom.command("public-key")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A party's Ed25519 private key (PEM).",
)
@click.option(
    "--definition",
    type=click.Path(exists=True, dir_okay=False),
    help="Also say which party of this definition the key belongs to.",
)
@click.option("--json", "as_json", is_flag=True)
def public_key(key_path: str, definition: str | None, as_json: bool) -> int:
    """Print the public key (the party id in definitions) of a private key PEM."""
    from sgxcloud.cleanroom.approvals import encode_public_key

    public = encode_public_key(_key(key_path))
    doc: dict[str, Any] = {"key": key_path, "public_key": public}
    if definition:
        d = _definition(definition)
        party = next((p for p in d.parties if p.public_key == public), None)
        doc["party"] = party.name if party else None
        doc["roles"] = list(party.roles) if party else []

    def render(x):
        console.print(safe(x["public_key"]), highlight=False)
        if "party" in x:
            console.print(
                safe(f"party {x['party']} ({', '.join(x['roles'])})")
                if x["party"]
                else "[yellow]no party of this definition has this key[/]",
                highlight=False,
            )

    _emit(as_json, doc, render)
    return 0 if not definition or doc.get("party") else 1


@cleanroom.command()
@click.option(
    "--workdir",
    required=True,
    type=click.Path(file_okay=False),
    help="A directory prepared by the demo or by hand (see docs/cleanroom).",
)
@click.option("--json", "as_json", is_flag=True)
def local(workdir: str, as_json: bool) -> int:
    """Run every node and the coordinator as separate local processes (SIMULATED)."""
    from rich.panel import Panel

    from sgxcloud.cleanroom.local import LocalCollaboration
    from sgxcloud.cleanroom.transport.trust import SIMULATION_WARNING

    # Every process here is started with --allow-simulated: say what that means.
    Console(stderr=True).print(
        Panel(SIMULATION_WARNING, style="bold red", title="WARNING: SIMULATED collaboration")
    )

    def stop(_signum: int, _frame: Any) -> None:
        # SIGTERM's default ends this process at once and leaves every node and the
        # coordinator running; as an interrupt, the `with` below stops them first
        # (once: a second signal must not cut that short).
        for other in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(other, signal.SIG_IGN)
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    with LocalCollaboration.from_workdir(Path(workdir)) as collab:
        try:
            _privacy_warnings(_definition(str(collab.definition)))
            _emit(
                as_json,
                collab.describe(),
                lambda d: console.print(
                    "[bold red]SIMULATED[/] collaboration running; coordinator at "
                    f"{safe(d['url'])} "
                    "(Ctrl-C or SIGTERM stops it and its processes)"
                ),
            )
            sys.stdout.flush()  # a supervisor reading --json waits for it
            collab.wait()
        except KeyboardInterrupt:
            pass  # once running, a stop is the normal end; the `with` stops every process
    return 0


def _register_console() -> None:
    """The web console lives in its own module (it pulls in Starlette and Jinja)."""
    from sgxcloud.cli.cleanroom_console import console as console_command

    cleanroom.add_command(console_command)


_register_console()
