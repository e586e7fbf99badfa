"""A throwaway PostgreSQL server for the CAS tests (a real server, not a mock).

``server()`` starts one server per test session (initdb into a temporary
directory, ``pg_ctl start`` on a free loopback port) and stops it at exit;
``fresh_database(server)`` gives each test its own empty database.  As root,
PostgreSQL refuses to run, so the server runs as the ``postgres`` user via
``runuser`` with a directory it owns.

Without PostgreSQL binaries the tests are skipped with a loud reason, except
under ``CI=true``, where a missing server is a failure.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

SEARCH = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14")]


def find_bindir() -> Path | None:
    explicit = os.environ.get("SGXCLOUD_PG_BINDIR")
    candidates = [Path(explicit)] if explicit else SEARCH
    for candidate in candidates:
        if (candidate / "pg_ctl").exists() and (candidate / "initdb").exists():
            return candidate
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    run_as: str | None
    log: Path

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        return ["runuser", "-u", self.run_as, "--", *command] if self.run_as else command

    def start(self) -> None:
        subprocess.run(
            self._cmd(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ),
            check=True,
            capture_output=True,
        )
        self._pg_ctl_start()

    def _pg_ctl_start(self) -> None:
        # The server's own output goes to the log file (-l): were it left on
        # pg_ctl's stdout, it would hold our pipe open forever.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} "
            "-c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        subprocess.run(
            self._cmd(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-o",
                options,
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "start",
            ),
            check=True,
            capture_output=True,
            timeout=90,
        )

    def restart(self) -> None:
        """Stop the server (fast shutdown) and start it again on the same data."""
        subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60", "stop"),
            check=True,
            capture_output=True,
            timeout=90,
        )
        self._pg_ctl_start()

    def stop(self) -> None:
        subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop"),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


_server: PostgresServer | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server() -> PostgresServer:
    """The session's PostgreSQL server, started on first use (or skip/fail)."""
    global _server
    if _server is not None:
        return _server
    bindir = find_bindir()
    if bindir is None:
        reason = (
            "PostgreSQL binaries not found (looked in /usr/lib/postgresql/*/bin and PATH): "
            "PostgreSQL tests NOT RUN"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    run_as = None
    base = Path(tempfile.mkdtemp(prefix="sgxcloud-pg-"))
    if os.geteuid() == 0:
        run_as = "postgres"
        entry = pwd.getpwnam(run_as)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    candidate = PostgresServer(bindir, base / "data", _free_port(), run_as, base / "server.log")
    try:
        candidate.start()
    except subprocess.CalledProcessError as exc:
        log = candidate.log.read_text() if candidate.log.exists() else ""
        candidate.stop()
        pytest.fail(f"cannot start PostgreSQL: {exc.stderr.decode()[-500:]} {log[-500:]}")
    _server = candidate
    atexit.register(candidate.stop)
    return candidate


def fresh_database(pg: PostgresServer) -> str:
    """Create an empty database and return its SQLAlchemy URL."""
    import psycopg

    name = f"cas_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True
    ) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return pg.url(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend: a SQLite file, then a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cas.db'}"
    return fresh_database(server())


# -- a ready CAS over either backend, shared by the service, protocol and
# -- concurrency tests (this is the one helper module of tests/cas) ---------

MRENCLAVE = "ab" * 32
MRSIGNER = "cd" * 32
CLOCK = 1_760_000_000  # a fixed "now" (2025-10-09) keeps every test deterministic


def owner_key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key) -> bytes:  # type: ignore[no-untyped-def]
    """The key as an unencrypted PKCS#8 PEM file would hold it (for --key options)."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key) -> str:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def policy_text(
    owner,  # type: ignore[no-untyped-def]
    *,
    name: str = "shop",
    mrenclave: str = MRENCLAVE,
    allow_simulated: bool = True,
    predecessor: str | None = None,
    description: str = "test policy",
    readers=(),  # type: ignore[no-untyped-def]
) -> str:
    import yaml

    document = {
        "name": name,
        "description": description,
        "access": {
            "owners": [
                {"name": f"owner{i}" if i else "owner", "public_key": public_pem(o)}
                for i, o in enumerate(owner if isinstance(owner, list | tuple) else [owner])
            ],
            "readers": [
                {"name": f"reader{i}", "public_key": public_pem(r)} for i, r in enumerate(readers)
            ],
        },
        "services": {
            "web": {
                "identities": [{"mrenclave": mrenclave}],
                "allow_simulated": allow_simulated,
                "command": ["/usr/bin/python3", "app.py", "--db-password={{secret:db_password}}"],
                "environment": {"API_TOKEN": "{{ secret:api_token:base64 }}", "MODE": "prod"},
                "files": {
                    "/etc/app/tls.key": "{{secret:tls_key}}",
                    "/etc/app/tls.crt": "{{secret:tls_cert:chain-pem}}",
                    "/dev/attestation/keys/data": "{{secret:data_key:raw}}",
                },
            }
        },
        "secrets": {
            "db_password": {"kind": "random", "size": 24},
            "api_token": {"kind": "random", "size": 32},
            "tls_key": {"kind": "private-key", "algorithm": "ec-p256"},
            "tls_cert": {
                "kind": "x509",
                "key": "tls_key",
                "subject": "CN=web.shop.example",
                "sans": ["web.shop.example", "10.0.0.5"],
                "validity_days": 30,
            },
            "data_key": {"kind": "gramine-key"},
        },
    }
    if predecessor is not None:
        document["predecessor"] = predecessor
    return yaml.safe_dump(document, sort_keys=False)


def make_service(url: str, keyring=None, *, nonce_ttl: int = 60):  # type: ignore[no-untyped-def]
    from sgxcloud.cas import secrets
    from sgxcloud.cas.evidence import DefaultVerifier
    from sgxcloud.cas.service.core import CasService
    from sgxcloud.cas.store import Database

    keyring = keyring or secrets.Keyring(secrets.MasterKey.generate())
    service = CasService(Database.open(url), keyring, DefaultVerifier(None), nonce_ttl=nonce_ttl)
    service.start()
    return service


def simulated_identity(mrenclave: str = MRENCLAVE, debug: bool = False):  # type: ignore[no-untyped-def]
    from sgxcloud.sgx.identity import EnclaveIdentity

    return EnclaveIdentity(mrenclave, MRSIGNER, 0, 0, debug)


AUDIENCE = "https://cas.test:443"
"""The origin in-process tests sign for (a served app accepts its own URL's)."""
DEPLOYMENT = "d" * 32
"""A deployment id for consents handed straight to a service (the HTTP layer checks ids)."""


def consent_document(  # type: ignore[no-untyped-def]
    text: str,
    key,
    *,
    now: int = CLOCK,
    audience: str = AUDIENCE,
    valid_for: int = 3600,
    deployment: str = DEPLOYMENT,
):
    """A co-owner's signed consent to own the policy ``text`` (what 'policy consent' writes).

    Sent over HTTP, ``deployment`` must be the service's (``service.deployment_id``).
    """
    from sgxcloud.cas.policy import load_policy
    from sgxcloud.cas.service import auth

    policy = load_policy(text)
    return auth.sign_consent(
        key,
        deployment=deployment,
        audience=audience,
        policy=policy.name,
        policy_hash=policy.hash,
        expires_at=now + valid_for,
    )


def consents(text: str, *keys, now: int = CLOCK):  # type: ignore[no-untyped-def]
    """Verified consents of ``keys`` for ``text``, as the HTTP layer hands them to the service."""
    from sgxcloud.cas.service import auth

    return [
        auth.verify_consent(
            consent_document(text, key, now=now),
            deployment=DEPLOYMENT,
            audiences=frozenset({AUDIENCE}),
            now=now,
        )
        for key in keys
    ]
