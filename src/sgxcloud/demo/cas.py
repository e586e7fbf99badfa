"""Demo of the attestation and configuration service (CAS), on a machine without SGX.

A CAS runs over HTTPS on loopback; an owner applies a policy with a signed
request; the demo workload attests with SIMULATED evidence (the policy
explicitly allows simulation: there is no SGX here) and receives its
configuration; a variant with the wrong MRENCLAVE is refused (the enclave is
told only an audit entry ref; the owner reads the reason in the audit log);
the audit chain is verified.  Secret values are never printed.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from sgxcloud.cas import audit, client, secrets
from sgxcloud.cas.config import Settings
from sgxcloud.cas.evidence import SIMULATED_WARNING
from sgxcloud.cas.service.server import (
    background_https,
    build_app,
    build_service,
    make_loopback_tls,
)
from sgxcloud.sgx.identity import EnclaveIdentity

# The measurement the demo pretends its workload has (a real one comes from
# `gramine-sgx-sign`, see deploy/gramine/README.md).
WORKLOAD_MRENCLAVE = hashlib.sha256(b"sgxcloud demo workload v1").hexdigest()
WORKLOAD_MRSIGNER = hashlib.sha256(b"sgxcloud demo signer").hexdigest()
TAMPERED_MRENCLAVE = hashlib.sha256(b"sgxcloud demo workload v1 + backdoor").hexdigest()


def _policy(owner_pem: str) -> str:
    return yaml.safe_dump(
        {
            "name": "demo",
            "description": "Demo workload; SIMULATION ALLOWED because this machine has no SGX",
            "access": {"owners": [{"name": "demo owner", "public_key": owner_pem}]},
            "services": {
                "workload": {
                    "identities": [{"mrenclave": WORKLOAD_MRENCLAVE}],
                    "allow_simulated": True,
                    "command": [
                        "python3",
                        "-m",
                        "workload",
                        "--db-password={{secret:db_password}}",
                    ],
                    "environment": {"API_TOKEN": "{{secret:api_token:base64}}", "REGION": "eu"},
                    "files": {
                        "/etc/workload/tls.key": "{{secret:tls_key}}",
                        "/etc/workload/tls.crt": "{{secret:tls_cert:chain-pem}}",
                        "/dev/attestation/keys/data": "{{secret:volume_key:raw}}",
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
                    "subject": "CN=workload.demo.internal",
                    "sans": ["workload.demo.internal", "127.0.0.1"],
                    "validity_days": 30,
                },
                "volume_key": {"kind": "gramine-key"},
            },
        },
        sort_keys=False,
    )


def _masked(value: str | bytes) -> str:
    """A fingerprint instead of a secret: enough to compare, nothing to steal."""
    data = value.encode() if isinstance(value, str) else value
    return f"<{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:10]}…>"


def run(console: Console, workdir: Path) -> dict[str, Any]:
    """Show the CAS story in a few screens; returns a small summary."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "cas"
    home.mkdir(exist_ok=True)
    key_path = home / "keys" / "master.key"  # never beside the database
    key_path.parent.mkdir(mode=0o700, exist_ok=True)
    if not key_path.exists():
        secrets.write_master_key(key_path, secrets.MasterKey.generate())
    tls = make_loopback_tls(home / "tls")
    settings = Settings(
        database_url=f"sqlite:///{home / 'cas-demo.db'}",
        master_key_file=key_path,
        tls_cert=tls.cert,
        tls_key=tls.key,
    )
    (home / "cas-demo.db").unlink(missing_ok=True)
    service = build_service(settings)
    owner = secrets.new_private_key("ec-p256")
    owner_pem = (
        owner.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    summary: dict[str, Any] = {}
    console.rule("[bold]Attestation and configuration service (CAS)")
    try:
        with background_https(build_app(settings, service), tls) as url:
            console.print(
                f"CAS listening on [bold]{url}[/] (TLS, pinned demo CA), "
                f"database SQLite, master key id {service.keyring.current.key_id}"
            )
            with client.OwnerClient(url, owner, ca_file=tls.ca_cert) as owner_client:
                applied = owner_client.apply(_policy(owner_pem))
            summary["policy_hash"] = applied["policy_hash"]
            table = Table("policy", "service", "accepted MRENCLAVE", "simulation", "secrets made")
            table.add_row(
                "demo",
                "workload",
                WORKLOAD_MRENCLAVE[:16] + "…",
                "[bold red]ALLOWED (demo only)[/]",
                ", ".join(applied["generated_secrets"]),
            )
            console.print(
                Panel(
                    table,
                    title=f"owner applied policy v{applied['version']} "
                    f"(signed request) hash {applied['policy_hash'][:16]}…",
                )
            )

            identity = EnclaveIdentity(WORKLOAD_MRENCLAVE, WORKLOAD_MRSIGNER, 1, 1, False)
            started = time.perf_counter()
            fetched = client.fetch_configuration(
                url,
                policy="demo",
                service="workload",
                ca_file=tls.ca_cert,
                root=workdir,
                simulate=identity,
            )
            elapsed_ms = (time.perf_counter() - started) * 1000
            config = fetched.configuration
            received = Table("what", "value (secrets masked)")
            received.add_row(
                "argv",
                " ".join(config.argv[:3])
                + " --db-password="
                + _masked(config.argv[3].split("=", 1)[1]),
            )
            for name, value in config.env.items():
                received.add_row(f"env {name}", value if name == "REGION" else _masked(value))
            for path, content in config.files.items():
                received.add_row(f"file {path}", _masked(content))
            received.add_row(
                "enclave certificate",
                f"{fetched.certificate.subject.rfc4514_string()} issued by "
                f"{fetched.ca_certificate.subject.rfc4514_string()}",
            )
            console.print(
                Panel(
                    Group(f"[bold red]{SIMULATED_WARNING}[/]", received),
                    title=f"[green]ACCEPTED[/] workload attested (SIMULATED) in "
                    f"{elapsed_ms:.0f} ms: configuration decrypted inside the 'enclave'",
                    border_style="red",
                )
            )
            summary.update(
                accepted=True,
                simulated=fetched.simulated,
                tcb_status=fetched.tcb_status,
                attest_ms=round(elapsed_ms, 1),
            )

            tampered = EnclaveIdentity(TAMPERED_MRENCLAVE, WORKLOAD_MRSIGNER, 1, 1, False)
            try:
                client.fetch_configuration(
                    url,
                    policy="demo",
                    service="workload",
                    ca_file=tls.ca_cert,
                    root=workdir,
                    simulate=tampered,
                )
                reasons, told = ["(unexpectedly accepted)"], "accepted"
            except client.AttestationRefused as exc:
                # The enclave learns only a verdict and an audit entry ref; the
                # owner reads the reasons from the audit log.
                told = f"code {exc.code!r}, audit entry {exc.audit_ref}"
                with client.OwnerClient(url, owner, ca_file=tls.ca_cert) as owner_client:
                    entry = owner_client.audit_entry(exc.audit_ref) if exc.audit_ref else None
                reasons = entry["detail"]["reasons"] if entry else ["(entry not visible)"]
            console.print(
                Panel(
                    Group(
                        f"the enclave is told only: [bold]{told}[/]",
                        "the owner reads the reasons in that audit entry (signed request):",
                        *(f"• {escape(r)}" for r in reasons),
                    ),
                    title=f"[red]REJECTED[/] variant with MRENCLAVE {TAMPERED_MRENCLAVE[:16]}… "
                    "(SIMULATED evidence)",
                    border_style="red",
                )
            )
            summary["rejected_reasons"] = reasons
        report = audit.verify_chain(service.database)
        entries = audit.entries(service.database)
        log = Table("#", "kind", "subject", "outcome")
        for entry in entries:
            style = {"accepted": "green", "rejected": "red"}.get(entry.outcome, "")
            log.add_row(
                str(entry.seq),
                entry.kind,
                entry.subject,
                f"[{style}]{entry.outcome}[/]" if style else entry.outcome,
            )
        verdict = "[green]intact[/]" if report.ok else "[red]BROKEN[/]"
        console.print(Panel(log, title=f"audit chain {verdict}, head {report.head_hash[:16]}…"))
        summary.update(audit_entries=report.entries, audit_ok=report.ok)
    finally:
        service.stop()
    return summary
