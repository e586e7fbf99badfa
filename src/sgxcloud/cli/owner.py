"""``sgxcloud owner``: make and identify the keys that CAS policy owners sign with.

``keygen`` makes an owner key (Ed25519 or P-256) and, for owners named by a
client certificate, a certificate signing request; ``id`` prints the
principal id a policy names an owner by, from any key, certificate or CSR.
No service is needed.  Exit status: 0 done, 2 usage or input error.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sgxcloud.cas.policy import certificate_id, public_key_id
from sgxcloud.cli.output import console, safe
from sgxcloud.errors import InputError

ALGORITHMS = ("ed25519", "p256")


@click.group(name="owner")
def owner() -> None:
    """Owner keys for CAS policies: make one, or print the id a policy names it by.

    A policy lists its owners by public key (access.owners[].public_key, id
    key:sha256:...) or by TLS client certificate (client_certificate_sha256, id
    cert:sha256:...); every owner request is signed with the private key.
    """


def _public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode``; never replace an existing file (it may be someone's key)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise InputError(f"{path} exists; refusing to replace it") from None
    except OSError as exc:
        raise InputError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _parse_subject(text: str) -> x509.Name:
    try:
        return x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise InputError(
            f"--subject {text!r} is not an RFC 4514 name (e.g. CN=alice,O=Example)"
        ) from exc


@owner.command(name="keygen")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file to create (PEM, mode 0600; never overwritten). The public key "
    "goes beside it as NAME.pub.pem.",
)
@click.option(
    "--algorithm",
    type=click.Choice(ALGORITHMS),
    default="ed25519",
    show_default=True,
    help="Ed25519, or P-256 (ECDSA) where a client certificate or HSM needs it.",
)
@click.option(
    "--csr",
    "csr_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a certificate signing request here, for owners named by client "
    "certificate: your owner CA signs it; 'owner id' of the certificate is the id to list.",
)
@click.option(
    "--subject",
    default=None,
    help="Subject of the CSR, RFC 4514 (e.g. 'CN=alice,O=Example'). Required with --csr.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def keygen(
    out: Path, algorithm: str, csr_path: Path | None, subject: str | None, as_json: bool
) -> int:
    """Make an owner key pair (and optionally a CSR); print its principal id.

    Paste NAME.pub.pem into the policy's access.owners[].public_key, then sign
    requests with --key NAME (or SGXCLOUD_CAS_OWNER_KEY). Keep the private key
    off shared machines: whoever holds it owns the policy.
    """
    if csr_path is not None and not subject:
        raise click.UsageError("--csr needs --subject (e.g. --subject 'CN=alice,O=Example')")
    if subject and csr_path is None:
        raise click.UsageError("--subject is only used with --csr")
    public_path = out.with_name(out.name.removesuffix(".pem") + ".pub.pem")
    for path in (out, public_path, csr_path):
        if path is not None and path.exists():
            raise InputError(f"{path} exists; refusing to replace it")
    name = _parse_subject(subject) if subject else None
    key: Any = (
        ed25519.Ed25519PrivateKey.generate()
        if algorithm == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    csr_pem = None
    if name is not None:
        builder = x509.CertificateSigningRequestBuilder().subject_name(name)
        # Ed25519 signs without a separate hash; ECDSA with SHA-256.
        digest = None if algorithm == "ed25519" else hashes.SHA256()
        csr_pem = builder.sign(key, digest).public_bytes(serialization.Encoding.PEM)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(out, private_pem, 0o600)
    _write_new(public_path, _public_pem(key), 0o644)
    if csr_path is not None and csr_pem is not None:
        _write_new(csr_path, csr_pem, 0o644)
    principal = public_key_id(_public_pem(key))
    result = {
        "id": principal,
        "algorithm": algorithm,
        "private_key": str(out),
        "public_key": str(public_path),
        "csr": str(csr_path) if csr_path is not None else None,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return 0
    out_console = console()
    out_console.print(f"owner key {safe(out)} ({algorithm}), public key {safe(public_path)}")
    if csr_path is not None:
        out_console.print(f"certificate signing request {safe(csr_path)} (subject {safe(subject)})")
    out_console.print(f"id {safe(principal)}")
    return 0


def identify(data: bytes) -> dict[str, Any]:
    """The principal id(s) of a PEM/DER private key, public key, certificate or CSR."""
    text = data.lstrip()
    if text.startswith(b"-----BEGIN CERTIFICATE-----") or not text.startswith(b"-----"):
        try:
            certificate = (
                x509.load_pem_x509_certificate(data)
                if text.startswith(b"-----")
                else x509.load_der_x509_certificate(data)
            )
        except ValueError:
            certificate = None
        if certificate is not None:
            der = certificate.public_bytes(serialization.Encoding.DER)
            return {
                "kind": "certificate",
                "id": certificate_id(der),
                "key_id": public_key_id(_public_pem_of(certificate.public_key())),
                "client_certificate_sha256": hashlib.sha256(der).hexdigest(),
                "subject": certificate.subject.rfc4514_string(),
            }
    if b"CERTIFICATE REQUEST" in text[:64]:
        request = x509.load_pem_x509_csr(data)
        return {
            "kind": "certificate signing request",
            "id": None,
            "key_id": public_key_id(_public_pem_of(request.public_key())),
            "subject": request.subject.rfc4514_string(),
        }
    if b"PRIVATE KEY" in text[:64]:
        private = serialization.load_pem_private_key(data, password=None)
        return {"kind": "private key", "id": public_key_id(_public_pem(private))}
    return {"kind": "public key", "id": public_key_id(data)}


def _public_pem_of(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@owner.command(name="id")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def id_(file: Path, as_json: bool) -> int:
    """Print the principal id of FILE: a key, a certificate (PEM or DER) or a CSR.

    A key gives key:sha256:<hex> (list it with public_key); a certificate gives
    cert:sha256:<hex> (its client_certificate_sha256 is the hex part). A CSR
    has no certificate id yet: the id of the key it carries is shown.
    """
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {file}: {exc.strerror}") from exc
    try:
        found = identify(data)
    except (ValueError, TypeError, x509.InvalidVersion) as exc:
        raise InputError(
            f"{file} is not a key, certificate or CSR this tool reads "
            "(PEM keys unencrypted; certificates PEM or DER)"
        ) from exc
    found["source"] = str(file)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return 0
    out = console()
    out.print(
        safe(found["id"] or f"(no certificate yet) key id {found['key_id']}"), highlight=False
    )
    if found.get("subject"):
        out.print(
            safe(f"{found['kind']} {found['subject']}; key id {found['key_id']}"),
            highlight=False,
            style="dim",
        )
    return 0
