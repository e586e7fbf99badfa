"""``sgxcloud policy``: owners apply, show, diff, delete and validate CAS policies.

Thin over :class:`sgxcloud.cas.client.OwnerClient`; every request is signed
with the owner's private key.  Exit status: 0 done (``diff``: no difference;
``validate``: valid), 1 refused or conflicting (``diff``: differences;
``validate``: problems found), 2 usage or input error.

The connection options (``--url``, ``--key``, ``--cert``, ``--ca-file``,
``--deployment``, ``--json``, ``--wide``) are accepted before or after the
subcommand, and ``--url``/``--key``/``--cert``/``--ca-file``/``--deployment``
also come from ``SGXCLOUD_CAS_URL``/``_OWNER_KEY``/``_OWNER_CERT``/``_CA``/
``_DEPLOYMENT`` — the one convention of every command that talks to a CAS.
Signatures name the CAS deployment: pinned with ``--deployment``, else the id
the CAS serves at ``/v1/health`` (asked over the pinned TLS).
"""

from __future__ import annotations

import difflib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from sgxcloud.cas import client as cas_client
from sgxcloud.cas.answers import UnverifiedAnswers
from sgxcloud.cas.client import OwnerClient
from sgxcloud.cas.errors import PolicyError
from sgxcloud.cas.policy import certificate_id, load_policy, public_key_id
from sgxcloud.cli.output import code, console, safe
from sgxcloud.cli.owner_options import (
    CAS_KEY_HELP,
    DEPLOYMENT_HELP,
    owner_credentials,
    read_deployment,
)
from sgxcloud.errors import InputError


@dataclass
class Connection:
    url: str | None
    ca_file: Path | None
    key_file: Path | None
    cert_file: Path | None
    as_json: bool
    wide: bool = False
    deployment: str | None = None
    cas_key: Path | None = None

    def client(self) -> OwnerClient:
        url, key, certificate = self.credentials()
        with warnings.catch_warnings(record=True) as unverified:
            warnings.simplefilter("always", UnverifiedAnswers)
            made = OwnerClient(
                url,
                key,
                ca_file=self.ca_file,
                certificate=certificate,
                deployment=read_deployment(self.deployment),
                cas_key=self.cas_key,
            )
        for warning in unverified:  # one plain line on stderr, not Python's warning format
            click.echo(f"warning: {warning.message}", err=True)
        return made

    def credentials(self) -> tuple[str, Any, x509.Certificate | None]:
        """URL, private key and (optional) certificate of the owner running the command."""
        if not self.url:
            raise click.UsageError("--url (or SGXCLOUD_CAS_URL) is required")
        if self.key_file is None:
            raise click.UsageError("--key (or SGXCLOUD_CAS_OWNER_KEY) is required")
        try:
            key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"cannot load the owner key {self.key_file}") from exc
        certificate = None
        if self.cert_file is not None:
            try:
                certificate = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot load the owner certificate {self.cert_file}") from exc
        return self.url, key, certificate


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text") from exc


def _emit(conn: Connection, data: Any, human: Any) -> None:
    if conn.as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        console(conn.wide).print(human)


def _override(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A connection option given after the subcommand wins over the group's."""
    if param.name and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        conn = ctx.find_object(Connection)
        if conn is not None:
            setattr(conn, param.name, value)
    return value


_URL_HELP = "CAS base URL, e.g. https://cas.example:8443 (env SGXCLOUD_CAS_URL)."
_WIDE_HELP = "Never crop values to the terminal's width (always so when output is not a terminal)."


def connection_options(function: Any) -> Any:
    """The group's connection options, accepted again after the subcommand."""
    options = [
        click.option(
            "--url", metavar="URL", expose_value=False, callback=_override, help=_URL_HELP
        ),
        click.option(
            "--key",
            "key_file",
            expose_value=False,
            callback=_override,
            type=click.Path(dir_okay=False, path_type=Path),
            help="Owner private key (PEM) signing requests (env SGXCLOUD_CAS_OWNER_KEY).",
        ),
        click.option(
            "--cert",
            "cert_file",
            expose_value=False,
            callback=_override,
            type=click.Path(dir_okay=False, path_type=Path),
            help="Client certificate (PEM) if the policy names you by certificate.",
        ),
        click.option(
            "--ca-file",
            "ca_file",
            expose_value=False,
            callback=_override,
            type=click.Path(dir_okay=False, path_type=Path),
            help="Trust only this CA for the CAS's TLS (env SGXCLOUD_CAS_CA).",
        ),
        click.option(
            "--deployment",
            "deployment",
            metavar="ID|@FILE",
            expose_value=False,
            callback=_override,
            help=DEPLOYMENT_HELP[0].upper() + DEPLOYMENT_HELP[1:],
        ),
        click.option(
            "--cas-key",
            "cas_key",
            expose_value=False,
            callback=_override,
            type=click.Path(dir_okay=False, path_type=Path),
            help=CAS_KEY_HELP[0].upper() + CAS_KEY_HELP[1:],
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            default=None,
            expose_value=False,
            callback=_override,
            help="Print results as JSON for scripts.",
        ),
        click.option(
            "--wide",
            is_flag=True,
            default=None,
            expose_value=False,
            callback=_override,
            help=_WIDE_HELP,
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group(name="policy")
@click.option("--url", envvar="SGXCLOUD_CAS_URL", metavar="URL", help=_URL_HELP)
@owner_credentials()
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON for scripts.")
@click.option("--wide", is_flag=True, help=_WIDE_HELP)
@click.pass_context
def policy(
    ctx: click.Context,
    url: str | None,
    ca_file: Path | None,
    key_file: Path | None,
    cert_file: Path | None,
    deployment: str | None,
    cas_key: Path | None,
    as_json: bool,
    wide: bool,
) -> None:
    """Manage CAS policies as an owner (requests are signed with --key).

    An update must name, in its 'predecessor' field, the hash of the version it
    replaces (see 'show'); if someone else updated first, the service answers
    409 and nothing changes. Options may come before or after the subcommand.
    """
    ctx.obj = Connection(url, ca_file, key_file, cert_file, as_json, wide, deployment, cas_key)


def _check_locally(text: str, source: str) -> None:
    """Every problem of the document, each with its field path, before anything is sent."""
    try:
        load_policy(text)
    except PolicyError as exc:
        _print_problems(source, exc)
        raise click.exceptions.Exit(2) from None


def _print_problems(source: str, exc: PolicyError) -> None:
    out = console(stderr=True)
    out.print(f"error: {safe(source)}: {len(exc.problems)} problem(s):", highlight=False)
    for problem in exc.problems:
        out.print(
            f"  {safe(problem.field or '(document)')}: {safe(problem.message)}", highlight=False
        )


@policy.command(name="validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@connection_options
@click.pass_obj
def validate(conn: Connection, files: tuple[Path, ...]) -> int:
    """Check policy FILES offline, listing every problem with its field path.

    Runs exactly the checks the service runs on 'apply' (schema, placeholders,
    secret references, owners), without a service or a key. Exit 0 when every
    file is valid, 1 when any has problems, 2 when one cannot be read.
    """
    results = []
    for file in files:
        text = _read(file)
        try:
            loaded = load_policy(text)
        except PolicyError as exc:
            problems = [{"field": p.field, "message": p.message} for p in exc.problems]
            results.append({"file": str(file), "valid": False, "problems": problems})
            if not conn.as_json:
                _print_problems(str(file), exc)
            continue
        results.append(
            {
                "file": str(file),
                "valid": True,
                "name": loaded.name,
                "policy_hash": loaded.hash,
                "problems": [],
            }
        )
        if not conn.as_json:
            console(conn.wide).print(
                f"{safe(file)}: valid (policy {safe(loaded.name)}, hash {loaded.hash})",
                highlight=False,
            )
    if conn.as_json:
        click.echo(json.dumps(results, indent=2))
    return 0 if all(r["valid"] for r in results) else 1


def _read_consent(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(_read(path))
    except ValueError as exc:
        raise InputError(f"{path} is not a consent file (JSON from 'policy consent')") from exc
    if not isinstance(document, dict) or "signature" not in document:
        raise InputError(f"{path} is not a consent file (JSON from 'policy consent')")
    return document


@policy.command(name="apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@connection_options
@click.option(
    "--consent",
    "consent_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A co-owner's consent file ('policy consent'); once per owner the policy adds "
    "(and per reader who should get its audit entries).",
)
@click.pass_obj
def apply(conn: Connection, file: Path, consent_files: tuple[Path, ...]) -> int:
    """Create or update the policy in FILE (YAML); prints its new version and hash.

    Every owner the policy lists must have signed it: you, by this request,
    and each other owner it adds by a consent file made with 'policy consent'
    for exactly this file.
    """
    text = _read(file)
    _check_locally(text, str(file))  # every mistake, each with its field, before sending
    consents = [_read_consent(path) for path in consent_files]
    with conn.client() as client:
        result = client.apply(text, consents)
    table = Table(show_header=False, title=f"policy {safe(result['name'])}")
    table.add_row("version", safe(result["version"]))
    table.add_row("hash", safe(result["policy_hash"]))
    table.add_row("created", "yes" if result["created"] else "no (updated)")
    table.add_row("secrets generated", safe(", ".join(result["generated_secrets"]) or "none"))
    _emit(conn, result, table)
    return 0


@policy.command(name="consent")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--valid-for",
    "hours",
    type=click.IntRange(1, 7 * 24),
    default=24,
    show_default=True,
    help="Hours the consent stays usable (at most 7 days).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the consent here (default: standard output).",
)
@connection_options
@click.pass_obj
def consent(conn: Connection, file: Path, hours: int, output: Path | None) -> int:
    """Sign your consent to be an owner of exactly the policy in FILE.

    Hand the file to the owner who runs 'policy apply FILE --consent ...'.  It
    is valid only on the CAS deployment at --url, only for this exact policy
    version (its hash, which includes the predecessor), only once, until it
    expires.  With --deployment no service is contacted; without it, the
    deployment id is asked of the CAS at --url (GET /v1/health, over --ca-file).
    """
    text = _read(file)
    policy_doc = load_policy(text)
    url, key, certificate = conn.credentials()
    deployment = read_deployment(conn.deployment)
    if deployment is None:
        with conn.client() as client:
            deployment = client.deployment_id()
    try:
        document = cas_client.consent(
            key,
            url,
            text,
            now=int(time.time()),
            deployment=deployment,
            valid_for=hours * 3600,
            certificate=certificate,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    rendered = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if output is None:
        click.echo(rendered, nl=False)
        return 0
    try:
        output.write_text(rendered)
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror}") from exc
    summary = {
        "policy": policy_doc.name,
        "policy_hash": policy_doc.hash,
        "deployment": document["deployment"],
        "audience": document["audience"],
        "expires_at": document["expires_at"],
        "file": str(output),
    }
    _emit(
        conn,
        summary,
        f"consent to own {policy_doc.name} at {policy_doc.hash[:12]}… "
        f"on {document['audience']} (deployment {document['deployment']}) written to {output}",
    )
    return 0


@policy.command(name="show")
@click.argument("name")
@connection_options
@click.pass_obj
def show(conn: Connection, name: str) -> int:
    """Show policy NAME: version, hash, document and secret metadata (never values)."""
    with conn.client() as client:
        view = client.show(name)
    summary = Table(
        show_header=False, title=f"policy {safe(view['name'])} v{safe(view['version'])}"
    )
    summary.add_row("hash (predecessor of the next update)", safe(view["policy_hash"]))
    summary.add_row("updated by", safe(view["updated_by"]))
    secrets_table = Table("secret", "kind", "from", "sealed under key", title="secrets")
    for s in view["secrets"]:
        secrets_table.add_row(
            safe(s["name"]),
            safe(s["kind"]),
            safe(s["imported_from"] or "generated"),
            safe(s["master_key_id"] or "-"),
        )
    _emit(conn, view, Group(summary, secrets_table, code(view["text"], "yaml", conn.wide)))
    return 0


@policy.command(name="diff")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@connection_options
@click.pass_obj
def diff(conn: Connection, file: Path) -> int:
    """Compare FILE with the policy on the service; exit 1 if they differ."""
    text = _read(file)
    _check_locally(text, str(file))
    local = load_policy(text)
    with conn.client() as client:
        remote = client.show(local.name)
    lines = list(
        difflib.unified_diff(
            remote["text"].splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"{local.name} v{remote['version']} (service)",
            tofile=str(file),
        )
    )
    same = local.hash == remote["policy_hash"]
    predecessor_ok = local.predecessor == remote["policy_hash"]
    result = {
        "name": local.name,
        "same": same,
        "service_hash": remote["policy_hash"],
        "file_hash": local.hash,
        "predecessor_matches": predecessor_ok,
        "diff": "".join(lines),
    }
    if same:
        human: Any = f"[green]no difference[/] (hash {local.hash})"
    else:
        note = (
            "[green]predecessor matches the service: 'apply' will update[/]"
            if predecessor_ok
            else f"[yellow]predecessor must be {safe(remote['policy_hash'])} to update[/]"
        )
        human = Group(code("".join(lines) or "(layout only)", "diff", conn.wide), note)
    _emit(conn, result, human)
    return 0 if same else 1


@policy.command(name="delete")
@click.argument("name")
@click.option(
    "--predecessor",
    metavar="HASH",
    help="Delete only if the policy is still at this hash (default: the current one).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@connection_options
@click.pass_obj
def delete(conn: Connection, name: str, predecessor: str | None, yes: bool) -> int:
    """Delete policy NAME and all its secrets (enclaves can no longer attest to it)."""
    with conn.client() as client:
        if predecessor is None:
            predecessor = client.show(name)["policy_hash"]
        if not yes and not conn.as_json:
            click.confirm(
                f"Delete policy {name} at {predecessor[:12]}… and its secrets?", abort=True
            )
        client.delete(name, predecessor)
    _emit(
        conn,
        {"name": name, "deleted": True, "policy_hash": predecessor},
        Panel.fit(f"policy {safe(name)} deleted", style="red"),
    )
    return 0


@policy.command(name="owner-id")
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A PEM public key (default: the public half of --key).",
)
@click.option(
    "--certificate",
    "certificate_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A client certificate (PEM or DER) instead of a key.",
)
@connection_options
@click.pass_obj
def owner_id(conn: Connection, public_key_file: Path | None, certificate_file: Path | None) -> int:
    """Print the principal id of a key or certificate (no service needed).

    This is the id to pin a counterpart policy by, in export_to[].owner and
    import_from.owner, and to list in the operator's policy_creators setting.
    """
    if public_key_file is not None and certificate_file is not None:
        raise click.UsageError("give --public-key or --certificate, not both")
    try:
        if certificate_file is not None:
            source = certificate_file
            principal = certificate_id(certificate_file.read_bytes())
        elif public_key_file is not None:
            source = public_key_file
            principal = public_key_id(public_key_file.read_bytes())
        elif conn.key_file is not None:
            source = conn.key_file
            private = serialization.load_pem_private_key(conn.key_file.read_bytes(), None)
            principal = public_key_id(
                private.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        else:
            raise click.UsageError("give --public-key, --certificate or the group's --key")
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise InputError(f"{source} is not a readable key or certificate") from exc
    _emit(conn, {"id": principal, "source": str(source)}, principal)
    return 0
