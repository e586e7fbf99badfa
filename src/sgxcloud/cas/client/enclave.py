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
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sgxcloud.cas import protocol
from sgxcloud.cas.client.connection import CasConnection
from sgxcloud.cas.client.connection import pinned_tls as pinned_tls  # its historical home
from sgxcloud.cas.client.errors import (
    AttestationRefused,
    ClientError,
    NoEvidenceSource,
    ServiceUnavailable,
    UntrustedConfiguration,
)
from sgxcloud.cas.errors import AccessDenied
from sgxcloud.sgx.gramine import DEVICE, GramineAttestation
from sgxcloud.sgx.identity import EnclaveIdentity

log = logging.getLogger(__name__)

ATTESTATION_DIR = DEVICE.relative_to("/")
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
    audit_ref: str | None = None  # the audit entry of the decision (its owners read it)

    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


class GramineEvidence:
    """Quotes from Gramine's attestation pseudo-files under ``root`` (``/`` in an enclave)."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.device = GramineAttestation(root / ATTESTATION_DIR)
        self.directory = self.device.directory

    def available(self) -> bool:
        return self.device.available()

    def check_type(self) -> None:
        """Refuse an enclave built without remote attestation (``attestation_type`` none)."""
        reason = self.device.why_not_attestable()
        if reason is not None:
            raise NoEvidenceSource(reason)

    def evidence(self, report_data: bytes) -> bytes:
        try:
            return self.device.quote(report_data)
        except OSError as exc:
            raise ClientError(f"cannot get a quote from {self.directory}: {exc.strerror}") from exc


class SimulatedEvidence:
    """SIMULATED evidence claiming ``identity``: no SGX, no security; for tests and demos."""

    def __init__(self, identity: EnclaveIdentity) -> None:
        self.identity = identity

    def available(self) -> bool:
        return True

    def evidence(self, report_data: bytes) -> bytes:
        log.warning("using SIMULATED attestation evidence: no SGX hardware, no security")
        return _simulator()(self.identity, report_data).raw


@functools.cache
def _simulator() -> Callable[[EnclaveIdentity, bytes], Any]:
    # Imported on first use (an enclave never simulates, so it never loads the
    # evidence package), and once: an import statement costs ~5 µs every call.
    from sgxcloud.cas.evidence.simulated import make_simulated_evidence

    return make_simulated_evidence


def choose_evidence_source(
    root: Path = Path("/"), simulate: EnclaveIdentity | None = None
) -> GramineEvidence | SimulatedEvidence:
    """Gramine's quote when present; simulation only when explicitly asked for."""
    gramine = _gramine_at(root)
    if gramine.available():
        gramine.check_type()
        return gramine
    if simulate is not None:
        return SimulatedEvidence(simulate)
    raise NoEvidenceSource(
        f"no SGX attestation interface at {gramine.directory} (not in a Gramine enclave?) "
        "and simulation was not requested"
    )


@functools.lru_cache(maxsize=16)
def _gramine_at(root: Path) -> GramineEvidence:
    # Its paths are made once per root; whether the files exist is asked every time.
    return GramineEvidence(root)


def fetch_configuration(
    base_url: str,
    *,
    policy: str,
    service: str,
    ca_file: Path | None = None,
    root: Path = Path("/"),
    simulate: EnclaveIdentity | None = None,
    connection: CasConnection | None = None,
    timeout: float = 30.0,
    attempts: int = 1,
    backoff: float = 0.5,
    policy_owners: Collection[str] | None = None,
    policy_hash: str | None = None,
) -> FetchedConfiguration:
    """Attest to the CAS and return this enclave's configuration.

    Without ``connection``, one is opened to ``base_url`` trusting only
    ``ca_file`` (with ``timeout``) and closed at the end; pass a
    :class:`CasConnection` to reuse one (and its TLS session) across calls.

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
    owns_connection = connection is None
    if connection is None:
        connection = CasConnection(base_url, ca_file, timeout=timeout)
    try:
        for attempt in range(1, max(1, attempts) + 1):
            try:
                fetched = _attest(connection, source, policy, service)
                check_pins(fetched.configuration, policy, policy_owners, policy_hash)
                return fetched
            except ServiceUnavailable as exc:
                failure = exc
            if attempt >= attempts:
                raise failure
            delay = min(backoff * 2 ** (attempt - 1), 10.0)
            log.warning(
                "%s; retrying in %.1f s (attempt %d of %d)", failure, delay, attempt + 1, attempts
            )
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        if owns_connection:
            connection.close()


def check_pins(
    configuration: protocol.Configuration,
    policy: str,
    policy_owners: Collection[str] | None,
    policy_hash: str | None,
) -> None:
    """Refuse a configuration whose policy is not the one this enclave pins."""
    if configuration.policy_name != policy:
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
    connection: CasConnection,
    source: GramineEvidence | SimulatedEvidence,
    policy: str,
    service: str,
) -> FetchedConfiguration:
    key = protocol.new_enclave_key()  # fresh for every attempt, like the nonce
    public_key = key.public_key()
    grant = _answer(*connection.post_json("/v1/nonces"))
    nonce = protocol.parse_nonce(_field(grant, "nonce"))
    evidence = source.evidence(protocol.report_data_for(public_key, nonce))
    public_pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    answer = _answer(
        *connection.post_json(
            "/v1/attest",
            {
                "policy": policy,
                "service": service,
                "nonce": nonce.hex(),
                "public_key": public_pem.decode(),
                "evidence": base64.b64encode(evidence).decode(),
            },
        )
    )
    try:
        sealed = base64.b64decode(_field(answer, "sealed_configuration"), validate=True)
    except ValueError as exc:
        raise ClientError("the CAS's sealed configuration is not base64") from exc
    configuration = protocol.open_configuration(sealed, key, nonce)
    try:
        certificate = x509.load_pem_x509_certificate(_field(answer, "certificate").encode())
        ca_certificate = _ca_certificate(_field(answer, "ca_certificate"))
    except ValueError as exc:
        raise ClientError("the CAS answered with a malformed certificate") from exc
    if certificate.public_key() != public_key:
        raise ClientError("the certificate returned is not for this enclave's key")
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ClientError("the certificate returned is not issued by the CA returned") from exc
    fetched = FetchedConfiguration(
        configuration,
        key,
        certificate,
        ca_certificate,
        _field(answer, "policy_hash"),
        _flag(answer, "simulated"),
        _field(answer, "tcb_status"),
        answer.get("audit_ref"),
    )
    check_answer(fetched, policy, service)
    return fetched


def check_answer(fetched: FetchedConfiguration, policy: str, service: str) -> None:
    """Refuse an answer that is not for this request, or whose unsealed parts were changed.

    The sealed ``answer`` member (wire version 2) names the service the CAS
    answered for and binds the certificate, the CA, ``simulated`` and
    ``tcb_status`` that travel beside the seal; ``policy`` names the policy
    and its hash.  Only the CAS can write them (HPKE to this enclave's key,
    for this nonce), so a request or answer changed on its way — a service
    rewritten from ``web`` to ``admin``, another CA and certificate for this
    key — is refused before anything is installed.
    """
    configuration = fetched.configuration
    sealed = configuration.answer
    if sealed.get("version") != protocol.ANSWER_VERSION:
        raise UntrustedConfiguration(
            "the CAS's sealed answer does not say what it answers for (a CAS older than "
            "this client?): upgrade the CAS — nothing was installed"
        )
    if configuration.policy_name != policy or sealed.get("service") != service:
        raise UntrustedConfiguration(
            f"the CAS answered for {configuration.policy_name!r}/{sealed.get('service')!r}, "
            f"not {policy!r}/{service!r} (the request was changed on its way?) "
            "— nothing was installed"
        )
    unsealed = {
        "certificate_sha256": _der_sha256(fetched.certificate),
        "ca_certificate_sha256": _der_sha256(fetched.ca_certificate),
        "simulated": fetched.simulated,
        "tcb_status": fetched.tcb_status,
    }
    changed = sorted(name for name, value in unsealed.items() if sealed.get(name) != value)
    if fetched.policy_hash != configuration.policy_hash:
        changed.append("policy_hash")
    if changed:
        raise UntrustedConfiguration(
            f"the CAS's answer does not match what it sealed ({', '.join(changed)}: changed "
            "on its way?) — nothing was installed"
        )


def _der_sha256(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


@functools.lru_cache(maxsize=8)
def _ca_certificate(pem: str) -> x509.Certificate:
    # The same few policy CAs come back in every answer: each is parsed once.
    # (Every certificate issued is still verified against it.)
    return x509.load_pem_x509_certificate(pem.encode())


def _field(answer: dict[str, Any], name: str) -> str:
    value = answer.get(name)
    if not isinstance(value, str):
        raise ClientError(f"the CAS's answer lacks {name!r}")
    return value


def _flag(answer: dict[str, Any], name: str) -> bool:
    value = answer.get(name)
    if not isinstance(value, bool):
        raise ClientError(f"the CAS's answer lacks {name!r}")
    return value


def _answer(status: int, body: bytes) -> dict[str, Any]:
    """The JSON object of a successful answer; the matching error otherwise."""
    if status in RETRY_STATUSES:
        raise ServiceUnavailable(f"CAS answered {status}")
    try:
        document = json.loads(body.decode())  # UTF-8, as JSON on the wire is (RFC 8259)
    except ValueError as exc:
        raise ClientError(f"CAS answered {status} without JSON") from exc
    if not isinstance(document, dict):
        raise ClientError(f"CAS answered {status} with JSON that is not an object")
    if status == 403 and document.get("error") == "attestation-rejected":
        raise AttestationRefused(
            document.get("message", "attestation rejected"),
            code=document.get("code", "rejected"),
            audit_ref=document.get("audit_ref"),
        )
    if status == 403:
        raise AccessDenied(document.get("message", "forbidden"))
    if status >= 400:
        raise ClientError(f"CAS answered {status}: {document.get('message', '')}")
    return document
