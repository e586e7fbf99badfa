"""``sgxcloud cas``: run the attestation and configuration service.

Thin over :mod:`sgxcloud.cas.service.server` and :mod:`sgxcloud.cas.config`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.panel import Panel

from sgxcloud.cas import files, secrets
from sgxcloud.cas.config import check_settings_file, load_settings
from sgxcloud.cli.output import console, safe

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
@click.option(
    "--workers", type=click.IntRange(1, 64),
    help="Worker processes sharing the port (setting: workers; default 1). One process "
    "uses about one core: up to the number of cores (docs/cas/operator-guide.md).",
)  # fmt: skip
def serve(config_path: Path | None, host: str | None, port: int | None, workers: int | None) -> int:
    """Serve the HTTPS API until interrupted.

    Validates every setting, migrates the database (SQLite by default,
    PostgreSQL with database_url: postgresql://...), checks that the master key
    opens the stored secrets, then listens with the configured TLS certificate.
    With several workers, this process supervises them: one that dies is
    replaced, SIGTERM or SIGINT stops them all.
    Exit 2 on an invalid setting, with one line naming it.
    """
    from sgxcloud.cas.service.server import serve as run
    from sgxcloud.cas.tls import check_server_tls

    if config_path is not None:
        check_settings_file(config_path)
    settings = load_settings(config_path, host=host, port=port, workers=workers)
    settings.keyring()  # the master key first: without it nothing else matters
    if settings.tls_cert is not None and settings.tls_key is not None:
        for warning in check_server_tls(settings.tls_cert, settings.tls_key):
            console(stderr=True).print(f"[bold yellow]warning:[/] {safe(warning)}", soft_wrap=True)
    from sgxcloud.cas.store.db import secure_sqlite_files

    for message in secure_sqlite_files(settings.database_url):
        console(stderr=True).print(f"[bold yellow]warning:[/] {safe(message)}", soft_wrap=True)
    if settings.master_key_beside_database():
        console(stderr=True).print(
            f"[bold yellow]warning:[/] master key {safe(settings.master_key_file)} is in the same "
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
@click.option(
    "--tls-csr",
    "tls_names",
    multiple=True,
    metavar="HOST",
    help="Production TLS: make DIRECTORY/tls/server.key and a CSR naming HOST (repeat for "
    "every DNS name or IP that enclaves and owners use); your CA signs it into "
    "tls/server.pem, and enclaves pin that CA as cas-ca.pem.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Production TLS: an existing certificate chain (PEM) for the CAS (with --tls-key).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The private key (PEM) of --tls-cert.",
)
def init(
    directory: Path,
    key_dir: Path | None,
    loopback_tls: bool,
    tls_names: tuple[str, ...],
    tls_cert: Path | None,
    tls_key: Path | None,
) -> int:
    """Create DIRECTORY with a settings file, data/ for the database and a master key.

    The master key (mode 0600) encrypts every secret at rest, so it goes in a
    directory of its own (DIRECTORY/keys, or --key-dir), never beside the
    database in DIRECTORY/data: back up data/, never keys/.  Refuses to
    overwrite an existing key.
    """
    chosen = [bool(loopback_tls), bool(tls_names), tls_cert is not None or tls_key is not None]
    if sum(chosen) > 1:
        raise click.UsageError("choose one of --loopback-tls, --tls-csr, --tls-cert/--tls-key")
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_cert is not None and tls_key is not None:
        from sgxcloud.cas.tls import check_server_tls

        check_server_tls(tls_cert, tls_key)  # refuse unusable files before creating anything
    data_dir = directory / "data"
    key_dir = key_dir if key_dir is not None else directory / "keys"
    if key_dir.resolve() == data_dir.resolve():
        raise click.UsageError("--key-dir must not be the database directory")
    key_path = key_dir / "master.key"
    if key_path.exists():
        raise click.UsageError(f"{key_path} exists; refusing to replace a master key")
    # Every mode is explicit (whatever the umask): whoever can edit cas.yaml or
    # a directory on its path can point the service at their own database or key.
    if directory.exists():
        directory.chmod(directory.stat().st_mode & 0o755)
    else:
        files.make_dir(directory, files.PUBLIC_DIR)
    # The database (policies, sealed secrets) is the service user's alone.
    files.make_dir(data_dir, files.PRIVATE_DIR)
    files.make_dir(key_dir, files.PRIVATE_DIR)
    key = secrets.MasterKey.generate()
    secrets.write_master_key(key_path, key)
    key_setting = key_path.resolve()
    if key_setting.is_relative_to(directory.resolve()):
        key_setting = key_setting.relative_to(directory.resolve())
    answer_key_path = key_dir / ANSWER_KEY_NAME
    answer_public = _make_answer_key(answer_key_path, directory / ANSWER_PUBLIC_NAME)
    answer_setting = answer_key_path.resolve()
    if answer_setting.is_relative_to(directory.resolve()):
        answer_setting = answer_setting.relative_to(directory.resolve())
    notes: list[str] = []
    lines = [
        "# sgxcloud CAS settings (docs/cas/operator-guide.md)",
        "database_url: sqlite:///data/cas.db   # back up data/; never keys/ with it",
        f"master_key_file: {key_setting}",
        f"answer_signing_key_file: {answer_setting}   # owners pin {ANSWER_PUBLIC_NAME}",
        "host: 127.0.0.1",
        "port: 8443",
        "# workers: 2   # processes serving the port: about the cores the CAS may use",
        "# max_connections_per_client: 0   # behind a proxy hiding client addresses (default 64)",
        "nonce_ttl_seconds: 120",
        "# metrics_port: 9184   # Prometheus metrics, plain HTTP on metrics_host (127.0.0.1)",
        "collateral: none   # or: pccs (with pccs_url) or file (with collateral_file)",
    ]
    if loopback_tls:
        from sgxcloud.cas.service.server import make_loopback_tls

        tls = make_loopback_tls(directory / "tls")
        lines += [
            f"tls_cert: {tls.cert.relative_to(directory)}",
            f"tls_key: {tls.key.relative_to(directory)}",
        ]
    elif tls_names:
        from sgxcloud.cas.tls import make_key_and_csr

        _key, csr = make_key_and_csr(directory / "tls", list(tls_names))
        lines += [
            "tls_cert: tls/server.pem   # your CA's certificate for tls/server.csr (chain, PEM)",
            "tls_key: tls/server.key",
        ]
        notes.append(
            f"TLS: have your CA sign {csr} and save the chain as {directory / 'tls/server.pem'}; "
            "give enclave builders that CA's certificate as cas-ca.pem"
        )
    elif tls_cert is not None and tls_key is not None:
        lines += [f"tls_cert: {tls_cert.resolve()}", f"tls_key: {tls_key.resolve()}"]
    else:
        lines += ["# tls_cert: /etc/sgxcloud/cas.pem", "# tls_key: /etc/sgxcloud/cas.key"]
        notes.append(
            "TLS: none configured, and 'cas serve' needs it: rerun with --tls-csr HOST or "
            "--tls-cert/--tls-key, or set tls_cert and tls_key in cas.yaml"
        )
    settings_path = directory / "cas.yaml"
    if not settings_path.exists():
        # 0600: a database_url may carry a password
        files.write_file(settings_path, ("\n".join(lines) + "\n").encode(), files.PRIVATE)
    console().print(
        Panel.fit(
            f"master key id [bold]{safe(key.key_id)}[/] in {safe(key_path)}\n"
            f"answer signing key in {safe(answer_key_path)}; owners pin "
            f"{safe(directory / ANSWER_PUBLIC_NAME)} ({safe(answer_public)})\n"
            f"database in {safe(data_dir)}\nsettings in {safe(settings_path)}",
            title="CAS initialised",
        )
    )
    for note in notes:
        console().print(safe(note), highlight=False)
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
    console().print(f"{moved} secret(s) re-wrapped under master key {safe(keyring.current.key_id)}")
    return 0


@cas.command(name="backup")
@click.argument("destination", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=_CONFIG_HELP
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def backup(destination: Path, config_path: Path | None, as_json: bool) -> int:
    """Write a consistent copy of the database to DESTINATION while the service runs.

    SQLite: the online backup API (a snapshot; copying cas.db by hand misses
    what is still in cas.db-wal). PostgreSQL: pg_dump --format=custom (needs
    the PostgreSQL client tools). The copy holds sealed secrets only: back up
    the master key and the answer signing key separately, never beside it
    (a restore needs both: see 'cas restore --signing-key-pub'). Refuses to overwrite
    DESTINATION; a SQLite copy's audit chain is verified before it is kept.
    """
    from sgxcloud.cas.backup import backup as take

    settings = load_settings(config_path)
    report = take(settings.database_url, destination)
    if report.audit is not None and not report.audit.ok:
        destination.unlink(missing_ok=True)
        raise click.ClickException("the copy's audit chain does not verify; nothing kept")
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        chain = (
            f"; audit chain intact, {report.audit.entries} entries, head {report.audit.head_hash}"
            if report.audit is not None
            else ""
        )
        console().print(
            f"backup {safe(destination)} ({report.backend}, {report.size} bytes){safe(chain)}",
            highlight=False,
        )
    return 0


@cas.command(name="restore")
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=_CONFIG_HELP
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace an existing database (stop every 'cas serve' on it first).",
)
@click.option(
    "--signing-key-pub",
    "published",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    metavar="PUBLIC_PEM",
    help="The deployment's published answer signing public key (cas-signing.pub.pem, what "
    "owners pin): refuse to restore unless answer_signing_key_file is its private key.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def restore(
    source: Path, config_path: Path | None, replace: bool, published: Path | None, as_json: bool
) -> int:
    """Restore backup SOURCE into the configured database, then verify it.

    Stop the service first. The backup holds the database only: the key files
    (master key, answer signing key) come from the key backup. With
    --signing-key-pub the answer signing key is checked against the published
    public key before anything is restored; without it the restore prints the
    key's fingerprint to compare. Afterwards the audit chain is walked and every
    stored secret's master key is looked up in the configured keyring: a
    restore without the master key that sealed the secrets is refused.
    Exit 0 restored and verified, 1 the restored audit chain is broken or the
    signing key is not the published one.
    """
    from sgxcloud.cas import answers
    from sgxcloud.cas.backup import restore as load
    from sgxcloud.cas.store import Database

    settings = load_settings(config_path)
    keyring = settings.keyring()
    key_file = settings.answer_signing_key_file
    if published is not None:
        signing = answers.check_deployment_key(key_file, published)
    elif key_file is not None:
        signing = answers.fingerprint(answers.load_private_key(key_file).public_key())
    else:
        signing = None
    report = load(source, settings.database_url, replace=replace)
    database = Database.open(settings.database_url, migrate=False)
    try:
        with database.transaction() as repo:
            for key_id in sorted(repo.master_key_ids()):
                keyring.find(key_id)
    finally:
        database.close()
    assert report.audit is not None
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "answer_signing_key": signing}, indent=2))
        return 0 if report.audit.ok else 1
    if report.audit.ok:
        console().print(
            f"restored {safe(source)} into the {report.backend} database; audit chain intact, "
            f"{report.audit.entries} entries, head {report.audit.head_hash}",
            highlight=False,
        )
    else:
        console(stderr=True).print(
            f"restored, but the audit chain is BROKEN: "
            f"{safe([p.problem for p in report.audit.problems][:3])}"
        )
    if signing is None:
        console(stderr=True).print(
            "no answer_signing_key_file: this CAS will not sign answers and owners pinning "
            "the deployment's key refuse them; restore answer-signing.key from the key "
            "backup and set answer_signing_key_file",
            highlight=False,
        )
    elif published is not None:
        console().print(
            f"answer signing key {safe(key_file)} is the published {safe(published)} "
            f"({safe(signing)})",
            highlight=False,
        )
    else:
        console().print(
            f"answer signing key {safe(key_file)} ({safe(signing)}): check it is the "
            "published one with 'sgxcloud cas signing-key --check cas-signing.pub.pem'",
            highlight=False,
        )
    return 0 if report.audit.ok else 1


@cas.command(name="deployment")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=_CONFIG_HELP
)
@click.option(
    "--renew",
    is_flag=True,
    help="Give the database a new id first: for a copy (a restored backup) that becomes a "
    "deployment of its own. Also replaces answer_signing_key_file with a new key (the copy "
    "must not sign answers that verify against the original's pin) and writes its public "
    "key for the copy's owners to pin. Stop every 'cas serve' on it before.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def deployment(config_path: Path | None, renew: bool, as_json: bool) -> int:
    """Print this CAS deployment's id, which owners' signatures name.

    Random, made once with the database: every replica sharing it has the
    same id, and a backup restored elsewhere carries it (a restore is the same
    deployment). Owners who want to pin it pass it to 'sgxcloud policy
    --deployment' (otherwise their client asks GET /v1/health over the pinned
    TLS). A copy started as a separate CAS (e.g. staging from a production
    backup) would accept requests signed for the original: --renew it first;
    signed requests, consents and pins made for the old id then fail there.
    --renew also makes the copy a new answer signing key (red team rt11 F3):
    answers of the copy no longer verify against the original's published
    key; its owners pin the new public key it writes.
    """
    from sgxcloud.cas.store import Database

    settings = load_settings(config_path)
    key_file = settings.answer_signing_key_file if renew else None
    if key_file is not None and not key_file.is_file():
        raise click.UsageError(f"answer_signing_key_file {key_file} is not a file")
    database = Database.open(settings.database_url, migrate=False)
    try:
        with database.transaction() as repo:
            previous = repo.deployment_id()
            found = repo.renew_deployment_id() if renew else previous
    finally:
        database.close()
    renewed: dict[str, str] = {}
    if key_file is not None:
        renewed = _renew_answer_key(key_file, config_path)
    if as_json:
        answer = {"deployment": found, **({"previous": previous} if renew else {})}
        click.echo(json.dumps({**answer, **renewed}))
    elif renew:
        console().print(f"deployment {safe(found)} (was {safe(previous)})", highlight=False)
        if renewed:
            console().print(
                f"new answer signing key {safe(renewed['answer_signing_key_file'])} "
                f"({safe(renewed['fingerprint'])}); its public key "
                f"{safe(renewed['public_key_file'])} is what this deployment's owners must pin "
                "(--cas-key): the original's no longer verifies here. Copy the key to every "
                "replica of this deployment.",
                highlight=False,
            )
        else:
            console().print(
                "no answer_signing_key_file: this deployment signs no answers; make one "
                "with 'sgxcloud cas signing-key --generate KEY_FILE' (never the original's)",
                highlight=False,
            )
    else:
        click.echo(found)
    return 0


def _renew_answer_key(key_file: Path, config_path: Path | None) -> dict[str, str]:
    """Replace ``key_file`` with a new answer signing key; write its public key where
    ``cas init`` put the published one (beside the settings) if it is there, else beside
    the key.  A copy keeping the original's key would sign answers that verify against
    the original's pin (red team rt11 F3)."""
    from sgxcloud.cas import answers

    public_path = key_file.with_name(key_file.stem + ".pub.pem")
    if config_path is not None and (config_path.parent / ANSWER_PUBLIC_NAME).exists():
        public_path = config_path.parent / ANSWER_PUBLIC_NAME
    key = answers.generate_key()
    files.write_file(key_file, answers.private_pem(key), files.PRIVATE)
    files.write_file(public_path, answers.public_pem(key.public_key()), files.PUBLIC)
    return {
        "answer_signing_key_file": str(key_file),
        "public_key_file": str(public_path),
        "fingerprint": answers.fingerprint(key.public_key()),
    }


ANSWER_KEY_NAME = "answer-signing.key"
ANSWER_PUBLIC_NAME = "cas-signing.pub.pem"


def _make_answer_key(private_path: Path, public_path: Path) -> str:
    """A new answer signing key (0600) and its public key (0644); its fingerprint."""
    from sgxcloud.cas import answers

    if private_path.exists():
        raise click.UsageError(f"{private_path} exists; refusing to replace a signing key")
    key = answers.generate_key()
    files.write_file(private_path, answers.private_pem(key), files.PRIVATE, replace=False)
    files.write_file(public_path, answers.public_pem(key.public_key()), files.PUBLIC)
    return answers.fingerprint(key.public_key())


@cas.command(name="signing-key")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=_CONFIG_HELP
)
@click.option(
    "--generate",
    "generate",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="KEY_FILE",
    help="Make a new answer signing key in KEY_FILE (0600; beside the master key, never "
    "with the database) for a deployment made before signed answers; then set "
    "answer_signing_key_file to it, copy it to every replica and restart them.",
)
@click.option(
    "--check",
    "published",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    metavar="PUBLIC_PEM",
    help="Exit 0 if answer_signing_key_file is the private key of PUBLIC_PEM (the published "
    "cas-signing.pub.pem owners pin), 1 naming the key file to restore otherwise: run it "
    "after a restore or on a new replica.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def signing_key(
    config_path: Path | None, generate: Path | None, published: Path | None, as_json: bool
) -> int:
    """Print the public key (PEM) of the key signing this CAS's answers to owners.

    Owners pin it (sgxcloud policy/audit --cas-key FILE, env
    SGXCLOUD_CAS_SIGNING_KEY) and then refuse any answer it did not sign,
    which no proxy between them and the CAS can forge. Give them this output
    over a channel you trust, as enclaves get cas-ca.pem.
    """
    from sgxcloud.cas import answers

    if generate is not None:
        public_path = generate.with_name(generate.stem + ".pub.pem")
        found = _make_answer_key(generate, public_path)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "key_file": str(generate),
                        "public_key_file": str(public_path),
                        "fingerprint": found,
                    }
                )
            )
        else:
            console().print(
                f"answer signing key {safe(generate)}, public key {safe(public_path)} "
                f"({safe(found)}): set answer_signing_key_file: {safe(generate.resolve())}",
                highlight=False,
            )
        return 0
    settings = load_settings(config_path)
    if published is not None:
        found = answers.check_deployment_key(settings.answer_signing_key_file, published)
        if as_json:
            click.echo(json.dumps({"matches": True, "fingerprint": found}))
        else:
            console().print(
                f"answer signing key {safe(settings.answer_signing_key_file)} is the "
                f"published {safe(published)} ({safe(found)})",
                highlight=False,
            )
        return 0
    if settings.answer_signing_key_file is None:
        raise click.UsageError(
            "no answer_signing_key_file in the settings: make one with "
            "'sgxcloud cas signing-key --generate KEY_FILE' and set it"
        )
    public = answers.load_private_key(settings.answer_signing_key_file).public_key()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "public_key": answers.public_pem(public).decode(),
                    "fingerprint": answers.fingerprint(public),
                }
            )
        )
    else:
        click.echo(answers.public_pem(public).decode(), nl=False)
    return 0


@cas.command(name="openapi")
def openapi() -> int:
    """Print the OpenAPI document of the HTTP API (committed as docs/cas/openapi.json)."""
    from sgxcloud.cas.service.app import openapi_document

    click.echo(json.dumps(openapi_document(), indent=2, sort_keys=True))
    return 0
