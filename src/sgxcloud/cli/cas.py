"""``sgxcloud cas``: run the attestation and configuration service.

Thin over :mod:`sgxcloud.cas.service.server` and :mod:`sgxcloud.cas.config`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.panel import Panel

from sgxcloud.cas import secrets
from sgxcloud.cas.config import load_settings
from sgxcloud.cli.output import console

_CONFIG_HELP = (
    "Settings file (YAML). Every setting can also come from SGXCLOUD_CAS_<NAME>, which wins; "
    "see docs/cas/operator-guide.md."
)


@click.group(name="cas")
def cas() -> None:
    """Run the attestation and configuration service (CAS).

    Enclaves prove what they are and receive their configuration; owners
    manage policies with 'sgxcloud policy'; operators check the audit chain
    with 'sgxcloud audit verify'.
    """


@cas.command(name="serve")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=_CONFIG_HELP
)
@click.option("--host", help="Address to listen on (setting: host; default 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(1, 65535), help="TCP port (setting: port; default 8443)."
)
def serve(config_path: Path | None, host: str | None, port: int | None) -> int:
    """Serve the HTTPS API until interrupted.

    Validates every setting, migrates the database (SQLite by default,
    PostgreSQL with database_url: postgresql://...), checks that the master key
    opens the stored secrets, then listens with the configured TLS certificate.
    Exit 2 on an invalid setting, with one line naming it.
    """
    from sgxcloud.cas.service.server import serve as run

    settings = load_settings(config_path, host=host, port=port)
    if settings.master_key_beside_database():
        console(stderr=True).print(
            f"[bold yellow]warning:[/] master key {settings.master_key_file} is in the same "
            "directory as the SQLite database: a copy of that directory opens every secret. "
            "Move the key (or use SGXCLOUD_CAS_MASTER_KEY).",
            soft_wrap=True,
        )
    run(settings)
    return 0


@cas.command(name="init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--key-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for master.key (default DIRECTORY/keys; never the database's directory).",
)
@click.option(
    "--loopback-tls",
    is_flag=True,
    help="Also make a throwaway CA and a 127.0.0.1 certificate (testing only).",
)
def init(directory: Path, key_dir: Path | None, loopback_tls: bool) -> int:
    """Create DIRECTORY with a settings file, data/ for the database and a master key.

    The master key (mode 0600) encrypts every secret at rest, so it goes in a
    directory of its own (DIRECTORY/keys, or --key-dir), never beside the
    database in DIRECTORY/data: back up data/, never keys/.  Refuses to
    overwrite an existing key.
    """
    data_dir = directory / "data"
    key_dir = key_dir if key_dir is not None else directory / "keys"
    if key_dir.resolve() == data_dir.resolve():
        raise click.UsageError("--key-dir must not be the database directory")
    key_path = key_dir / "master.key"
    if key_path.exists():
        raise click.UsageError(f"{key_path} exists; refusing to replace a master key")
    data_dir.mkdir(parents=True, exist_ok=True)
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.MasterKey.generate()
    secrets.write_master_key(key_path, key)
    key_setting = key_path.resolve()
    if key_setting.is_relative_to(directory.resolve()):
        key_setting = key_setting.relative_to(directory.resolve())
    lines = [
        "# sgxcloud CAS settings (docs/cas/operator-guide.md)",
        "database_url: sqlite:///data/cas.db   # back up data/; never keys/ with it",
        f"master_key_file: {key_setting}",
        "host: 127.0.0.1",
        "port: 8443",
        "nonce_ttl_seconds: 120",
        "collateral: none   # or: pccs (with pccs_url) or file (with collateral_file)",
    ]
    if loopback_tls:
        from sgxcloud.cas.service.server import make_loopback_tls

        tls = make_loopback_tls(directory / "tls")
        lines += [
            f"tls_cert: {tls.cert.relative_to(directory)}",
            f"tls_key: {tls.key.relative_to(directory)}",
        ]
    else:
        lines += ["# tls_cert: /etc/sgxcloud/cas.pem", "# tls_key: /etc/sgxcloud/cas.key"]
    settings_path = directory / "cas.yaml"
    if not settings_path.exists():
        settings_path.write_text("\n".join(lines) + "\n")
    console().print(
        Panel.fit(
            f"master key id [bold]{key.key_id}[/] in {key_path}\n"
            f"database in {data_dir}\nsettings in {settings_path}",
            title="CAS initialised",
        )
    )
    return 0


@cas.command(name="rewrap")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=_CONFIG_HELP
)
def rewrap(config_path: Path | None) -> int:
    """Re-wrap every secret under the current master key (after a rotation).

    Set master_key_file to the new key and list the old one in
    retired_master_key_files, run this, then drop the retired key.
    """
    from sgxcloud.cas.service.materials import rewrap_all
    from sgxcloud.cas.store import Database

    settings = load_settings(config_path)
    keyring = settings.keyring()
    database = Database.open(settings.database_url)
    try:
        moved = database.run(lambda repo: rewrap_all(repo, keyring))
    finally:
        database.close()
    console().print(f"{moved} secret(s) re-wrapped under master key {keyring.current.key_id}")
    return 0


@cas.command(name="openapi")
def openapi() -> int:
    """Print the OpenAPI document of the HTTP API (committed as docs/cas/openapi.json)."""
    from sgxcloud.cas.service.app import openapi_document

    click.echo(json.dumps(openapi_document(), indent=2, sort_keys=True))
    return 0
