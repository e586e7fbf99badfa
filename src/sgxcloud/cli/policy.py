"""``sgxcloud policy``: owners apply, show, diff and delete CAS policies.

Thin over :class:`sgxcloud.cas.client.OwnerClient`; every request is signed
with the owner's private key.  Exit status: 0 done (``diff``: no difference),
1 refused or conflicting (``diff``: differences), 2 usage or input error.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from sgxcloud.cas.client import OwnerClient
from sgxcloud.cas.policy import certificate_id, load_policy, public_key_id
from sgxcloud.cli.owner_options import owner_credentials
from sgxcloud.errors import InputError


@dataclass
class Connection:
    url: str | None
    ca_file: Path | None
    key_file: Path | None
    cert_file: Path | None
    as_json: bool

    def client(self) -> OwnerClient:
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
        return OwnerClient(self.url, key, ca_file=self.ca_file, certificate=certificate)


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
        Console().print(human)


@click.group(name="policy")
@click.option(
    "--url",
    envvar="SGXCLOUD_CAS_URL",
    metavar="URL",
    help="CAS base URL, e.g. https://cas.example:8443 (env SGXCLOUD_CAS_URL).",
)
@owner_credentials()
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON for scripts.")
@click.pass_context
def policy(
    ctx: click.Context,
    url: str | None,
    ca_file: Path | None,
    key_file: Path | None,
    cert_file: Path | None,
    as_json: bool,
) -> None:
    """Manage CAS policies as an owner (requests are signed with --key).

    An update must name, in its 'predecessor' field, the hash of the version it
    replaces (see 'show'); if someone else updated first, the service answers
    409 and nothing changes.
    """
    ctx.obj = Connection(url, ca_file, key_file, cert_file, as_json)


@policy.command(name="apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def apply(conn: Connection, file: Path) -> int:
    """Create or update the policy in FILE (YAML); prints its new version and hash."""
    text = _read(file)
    load_policy(text)  # catch mistakes locally, with every field named
    with conn.client() as client:
        result = client.apply(text)
    table = Table(show_header=False, title=f"policy {result['name']}")
    table.add_row("version", str(result["version"]))
    table.add_row("hash", result["policy_hash"])
    table.add_row("created", "yes" if result["created"] else "no (updated)")
    table.add_row("secrets generated", ", ".join(result["generated_secrets"]) or "none")
    _emit(conn, result, table)
    return 0


@policy.command(name="show")
@click.argument("name")
@click.pass_obj
def show(conn: Connection, name: str) -> int:
    """Show policy NAME: version, hash, document and secret metadata (never values)."""
    with conn.client() as client:
        view = client.show(name)
    summary = Table(show_header=False, title=f"policy {view['name']} v{view['version']}")
    summary.add_row("hash (predecessor of the next update)", view["policy_hash"])
    summary.add_row("updated by", view["updated_by"])
    secrets_table = Table("secret", "kind", "from", "sealed under key", title="secrets")
    for s in view["secrets"]:
        secrets_table.add_row(
            s["name"], s["kind"], s["imported_from"] or "generated", s["master_key_id"] or "-"
        )
    _emit(conn, view, Group(summary, secrets_table, Syntax(view["text"], "yaml")))
    return 0


@policy.command(name="diff")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def diff(conn: Connection, file: Path) -> int:
    """Compare FILE with the policy on the service; exit 1 if they differ."""
    text = _read(file)
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
            else f"[yellow]predecessor must be {remote['policy_hash']} to update[/]"
        )
        human = Group(Syntax("".join(lines) or "(layout only)", "diff"), note)
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
        Panel.fit(f"policy {name} deleted", style="red"),
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
