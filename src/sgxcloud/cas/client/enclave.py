"""The enclave side of attest-and-fetch.

Inside an SGX enclave under Gramine::

    config = fetch_configuration("https://cas.example:8443", policy="shop",
                                 service="web", ca_file=Path("/app/cas-ca.pem"))

makes a fresh P-256 key pair, asks for a nonce, writes
``SHA-256(public key ‖ nonce)`` to ``/dev/attestation/user_report_data``,
reads the quote from ``/dev/attestation/quote``, sends both, and opens the
sealed configuration with the private key, which never leaves the enclave.

Without ``/dev/attestation`` there is no evidence, and the client says so: it
produces SIMULATED evidence only when the caller passes ``simulate=`` with
the identity to claim, and the service rejects that unless the policy allows
simulation.  The service's TLS certificate is checked against a pinned CA
file, never the system store: the CAS is its own trust root.

This module runs inside enclaves: it imports the protocol and cryptography,
never the service (no FastAPI, SQLAlchemy, dcap-qvl).
"""

from __future__ import annotations

import base64
import logging
import ssl
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sgxcloud.cas import protocol
from sgxcloud.cas.client.errors import (
    AttestationRefused,
    ClientError,
    NoEvidenceSource,
    ServiceUnavailable,
    UntrustedConfiguration,
)
from sgxcloud.cas.errors import AccessDenied
from sgxcloud.sgx.identity import EnclaveIdentity

log = logging.getLogger(__name__)

ATTESTATION_DIR = Path("dev/attestation")
RETRY_STATUSES = frozenset({502, 503, 504})
"""Answers a load balancer or a restarting replica gives: the next try may succeed."""


@dataclass(frozen=True)
class FetchedConfiguration:
    """What the enclave received: its configuration, its certificate, and how it got them."""

    configuration: protocol.Configuration
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    ca_certificate: x509.Certificate
    policy_hash: str
    simulated: bool
    tcb_status: str
    audit_seq: int | None = None

    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


class GramineEvidence:
    """Quotes from Gramine's attestation pseudo-files under ``root`` (``/`` in an enclave)."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.directory = root / ATTESTATION_DIR

    def available(self) -> bool:
        return (self.directory / "user_report_data").exists() and (
            self.directory / "quote"
        ).exists()

    def check_type(self) -> None:
        """Refuse an enclave built without remote attestation (``attestation_type`` none)."""
        kind_file = self.directory / "attestation_type"
        try:
            kind = kind_file.read_text().strip()
        except OSError:
            return  # older Gramine: no such file; the quote read will tell
        if kind not in ("dcap", "epid"):
            raise NoEvidenceSource(
                f"{kind_file} says {kind!r}: set sgx.remote_attestation = \"dcap\" in the manifest"
            )

    def evidence(self, report_data: bytes) -> bytes:
        # Writing user_report_data and then reading quote is Gramine's interface:
        # the read returns a quote over the report data just written.
        try:
            (self.directory / "user_report_data").write_bytes(report_data)
            return (self.directory / "quote").read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot get a quote from {self.directory}: {exc.strerror}") from exc


class SimulatedEvidence:
    """SIMULATED evidence claiming ``identity``: no SGX, no security; for tests and demos."""

    def __init__(self, identity: EnclaveIdentity) -> None:
        self.identity = identity

    def available(self) -> bool:
        return True

    def evidence(self, report_data: bytes) -> bytes:
        # Imported here: an enclave never simulates, so it never loads the evidence package.
        from sgxcloud.cas.evidence.simulated import make_simulated_evidence

        log.warning("using SIMULATED attestation evidence: no SGX hardware, no security")
        return make_simulated_evidence(self.identity, report_data).raw


def choose_evidence_source(
    root: Path = Path("/"), simulate: EnclaveIdentity | None = None
) -> GramineEvidence | SimulatedEvidence:
    """Gramine's quote when present; simulation only when explicitly asked for."""
    gramine = GramineEvidence(root)
    if gramine.available():
        gramine.check_type()
        return gramine
    if simulate is not None:
        return SimulatedEvidence(simulate)
    raise NoEvidenceSource(
        f"no SGX attestation interface at {gramine.directory} (not in a Gramine enclave?) "
        "and simulation was not requested"
    )


def pinned_tls(ca_file: Path) -> ssl.SSLContext:
    """A TLS context that trusts only the CAS's own CA."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"cannot load the pinned CA {ca_file}") from exc


def fetch_configuration(
    base_url: str,
    *,
    policy: str,
    service: str,
    ca_file: Path | None = None,
    root: Path = Path("/"),
    simulate: EnclaveIdentity | None = None,
    http_client: httpx.Client | None = None,
    timeout: float = 30.0,
    attempts: int = 1,
    backoff: float = 0.5,
    policy_owners: Collection[str] | None = None,
    policy_hash: str | None = None,
) -> FetchedConfiguration:
    """Attest to the CAS and return this enclave's configuration.

    ``policy_owners`` pins who controls the configuration: the policy must
    have been signed by at least one of these principal ids (as the CAS
    reports inside the sealed answer), else ``UntrustedConfiguration`` — a
    policy name alone can be taken by anyone who creates it first.
    ``policy_hash`` pins one exact policy version.  ``None`` checks nothing
    (the launcher makes the owner pin mandatory).

    With ``attempts`` > 1, an unreachable service or a 502/503/504 answer is
    retried with exponential backoff, each time with a fresh key and nonce: a
    replica that died mid-request (its nonce spent or not) costs one retry,
    never a wrong answer.  Refusals (403, 400...) are never retried.
    """
    source = choose_evidence_source(root, simulate)
    owns_client = http_client is None
    if http_client is None:
        if ca_file is None:
            raise ClientError("ca_file (the CAS's CA certificate) is required")
        http_client = httpx.Client(base_url=base_url, verify=pinned_tls(ca_file), timeout=timeout)
    try:
        for attempt in range(1, max(1, attempts) + 1):
            try:
                fetched = _attest(http_client, source, policy, service)
                check_pins(fetched.configuration, policy, policy_owners, policy_hash)
                return fetched
            except httpx.HTTPError as exc:
                failure: ServiceUnavailable = ServiceUnavailable(
                    f"cannot reach the CAS at {base_url}: {type(exc).__name__}"
                )
                failure.__cause__ = exc
            except ServiceUnavailable as exc:
                failure = exc
            if attempt >= attempts:
                raise failure
            delay = min(backoff * 2 ** (attempt - 1), 10.0)
            log.warning("%s; retrying in %.1f s (attempt %d of %d)", failure, delay, attempt + 1,
                        attempts)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        if owns_client:
            http_client.close()


def check_pins(
    configuration: protocol.Configuration,
    policy: str,
    policy_owners: Collection[str] | None,
    policy_hash: str | None,
) -> None:
    """Refuse a configuration whose policy is not the one this enclave pins."""
    if configuration.policy_name and configuration.policy_name != policy:
        raise UntrustedConfiguration(
            f"the CAS answered for policy {configuration.policy_name!r}, not {policy!r}"
        )
    if policy_owners is not None:
        pinned = {owner.strip() for owner in policy_owners if owner.strip()}
        if not pinned:
            raise UntrustedConfiguration("no policy owner to pin was given")
        if not pinned & set(configuration.policy_owners):
            signed = ", ".join(configuration.policy_owners) or "none reported (an older CAS?)"
            raise UntrustedConfiguration(
                f"policy {policy!r} is not signed by a pinned owner (its owners: {signed}); "
                "someone else may have created it under this name — nothing was installed"
            )
    if policy_hash is not None and configuration.policy_hash != policy_hash.lower():
        raise UntrustedConfiguration(
            f"policy {policy!r} has hash {configuration.policy_hash or 'unknown'}, "
            f"not the pinned {policy_hash}"
        )


def _attest(
    client: httpx.Client,
    source: GramineEvidence | SimulatedEvidence,
    policy: str,
    service: str,
) -> FetchedConfiguration:
    key = protocol.new_enclave_key()
    grant = _json(client.post("/v1/nonces"))
    nonce = protocol.parse_nonce(grant["nonce"])
    evidence = source.evidence(protocol.report_data_for(key.public_key(), nonce))
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    answer = _json(
        client.post(
            "/v1/attest",
            json={
                "policy": policy,
                "service": service,
                "nonce": nonce.hex(),
                "public_key": public_pem.decode(),
                "evidence": base64.b64encode(evidence).decode(),
            },
        )
    )
    configuration = protocol.open_configuration(
        base64.b64decode(answer["sealed_configuration"]), key, nonce
    )
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ca_certificate = x509.load_pem_x509_certificate(answer["ca_certificate"].encode())
    if certificate.public_key() != key.public_key():
        raise ClientError("the certificate returned is not for this enclave's key")
    certificate.verify_directly_issued_by(ca_certificate)
    return FetchedConfiguration(
        configuration,
        key,
        certificate,
        ca_certificate,
        answer["policy_hash"],
        bool(answer["simulated"]),
        answer["tcb_status"],
        answer.get("audit_seq"),
    )


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.status_code in RETRY_STATUSES:
        raise ServiceUnavailable(f"CAS answered {response.status_code}")
    try:
        body = response.json()
    except ValueError as exc:
        raise ClientError(f"CAS answered {response.status_code} without JSON") from exc
    if response.status_code == 403 and body.get("error") == "attestation-rejected":
        raise AttestationRefused(
            body.get("message", "attestation rejected"),
            code=body.get("code", "rejected"),
            audit_seq=body.get("audit_seq"),
        )
    if response.status_code == 403:
        raise AccessDenied(body.get("message", "forbidden"))
    if response.status_code >= 400:
        raise ClientError(f"CAS answered {response.status_code}: {body.get('message', '')}")
    return body
