"""What ties a TLS key to an enclave and to one collaboration.

REPORTDATA (64 bytes) = SHA-256 over length-prefixed parts, then 32 zero bytes::

    "sgxcloud-cleanroom-tls-v1" | SubjectPublicKeyInfo DER of the TLS key
    | collaboration definition hash | the peer's fresh nonce

Length prefixes (4-byte big-endian) make the encoding unambiguous and the
label keeps this hash from being confused with any other use of REPORTDATA.
A peer accepts the evidence only when it recomputes the same value from the
certificate *it saw in its own handshake*, *its own* definition hash and the
nonce *it* just sent: so a quote cannot be moved to another key, replayed into
another session, or used for a changed definition.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sgxcloud.cleanroom.transport.errors import PeerRefused
from sgxcloud.sgx.gramine import DEVICE, GramineAttestation
from sgxcloud.sgx.identity import EnclaveIdentity

DOMAIN = b"sgxcloud-cleanroom-tls-v1"
NONCE_SIZE = 32


def report_data(
    public_key_der: bytes, definition_hash: str, peer_nonce: bytes, *extra: bytes
) -> bytes:
    """REPORTDATA binding a key, a definition and a nonce (plus ``extra`` parts,
    e.g. the coordinator's result-signing key next to its TLS key)."""
    digest = hashlib.sha256()
    for part in (DOMAIN, public_key_der, definition_hash.encode(), peer_nonce, *extra):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest() + bytes(32)


class Attester(Protocol):
    """Produces evidence for given REPORTDATA (hardware quote or simulated)."""

    simulated: bool

    def evidence(self, report_data: bytes) -> Any: ...


class Verifier(Protocol):
    def verify(self, evidence: Any, now: int) -> Any: ...


@dataclass(frozen=True)
class SimulatedAttester:
    """Evidence produced without SGX, marked simulated by the attestation service."""

    identity: EnclaveIdentity
    simulated: bool = True

    def evidence(self, report_data: bytes) -> Any:
        from sgxcloud.cas.evidence.simulated import make_simulated_evidence

        return make_simulated_evidence(self.identity, report_data)


@dataclass(frozen=True)
class PeerPolicy:
    """What this process accepts from a peer: the definition's pins, nothing more."""

    definition_hash: str
    mrenclaves: frozenset[str]
    allow_simulation: bool
    verifier: Verifier
    allowed_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    tolerated_advisories: frozenset[str] = frozenset()
    """Intel security advisories a peer's platform may carry; ``*`` tolerates any."""
    pin: Callable[[EnclaveIdentity], bool] | None = None
    """Further identity checks (MRSIGNER, ISVPRODID, minimum ISVSVN, no debug)."""
    clock: Callable[[], int] = field(default=lambda: int(time.time()))
    simulation_refusal: str = ""
    """Why SIMULATED evidence is refused, when ``allow_simulation`` is false
    (the definition's reason unless set)."""

    def check(
        self, evidence: Any, peer_public_key_der: bytes, own_nonce: bytes, *extra: bytes
    ) -> Any:
        """Verify ``evidence`` for this session or raise :class:`PeerRefused`."""
        if evidence.simulated and not self.allow_simulation:
            raise _simulated_refused(self.simulation_refusal)
        try:
            verified = self.verifier.verify(evidence, self.clock())
        except Exception as exc:  # every verifier failure is one verdict
            raise PeerRefused(f"peer attestation evidence rejected ({_reason(exc)})") from exc
        if verified.simulated and not self.allow_simulation:
            raise _simulated_refused(self.simulation_refusal)
        if not verified.simulated and verified.tcb_status not in self.allowed_tcb_statuses:
            raise PeerRefused(
                f"peer platform TCB status {verified.tcb_status} is not allowed by the "
                "collaboration definition"
            )
        untolerated = sorted(set(verified.advisory_ids) - self.tolerated_advisories)
        if not verified.simulated and untolerated and "*" not in self.tolerated_advisories:
            raise PeerRefused(
                f"peer platform has advisories {', '.join(untolerated)} that the "
                "collaboration definition does not tolerate"
            )
        mrenclave = verified.identity.mrenclave.lower()
        if mrenclave not in self.mrenclaves or (self.pin and not self.pin(verified.identity)):
            raise PeerRefused(
                f"peer enclave MRENCLAVE {mrenclave[:16]}… is not pinned by the "
                "collaboration definition"
            )
        expected = report_data(peer_public_key_der, self.definition_hash, own_nonce, *extra)
        if not hmac.compare_digest(bytes(verified.report_data), expected):
            raise PeerRefused(
                "peer evidence is not bound to this TLS key, this session's nonce and "
                "this collaboration definition (replayed, relayed, or a changed definition)"
            )
        return verified


def _simulated_refused(reason: str = "") -> PeerRefused:
    return PeerRefused(
        "peer presented SIMULATED attestation evidence; "
        + (
            reason
            or "the collaboration definition requires SGX hardware "
            "(enclaves.allow_simulated is false)"
        )
    )


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def verifier_for(collateral_source: Any = None) -> Verifier:
    """The attestation service's composition root: DCAP quotes checked with
    dcap-qvl against ``collateral_source`` (a ``FileCollateral`` or
    ``PccsCollateral``), simulated documents read and marked simulated.

    Whether simulated evidence is acceptable is :class:`PeerPolicy`'s decision.
    """
    from sgxcloud.cas.evidence import DefaultVerifier

    return DefaultVerifier(collateral_source)


GRAMINE_ATTESTATION = DEVICE


@dataclass(frozen=True)
class GramineAttester:
    """Hardware evidence from inside a Gramine enclave, by
    :class:`sgxcloud.sgx.gramine.GramineAttestation` (as the CAS client gets it).

    ``root`` is a parameter so a recorded tree can stand in for the
    pseudo-files in tests; the quote is returned as is, never parsed here.
    """

    root: Path = GRAMINE_ATTESTATION
    simulated: bool = False

    @classmethod
    def available(cls, root: Path = GRAMINE_ATTESTATION) -> bool:
        return GramineAttestation(root).available()

    def evidence(self, report_data: bytes) -> Any:
        from sgxcloud.cas.evidence.model import Evidence

        try:
            quote = GramineAttestation(self.root).quote(report_data)
        except OSError as exc:
            raise PeerRefused(f"cannot obtain a quote from {self.root} ({exc.strerror})") from exc
        return Evidence("dcap", quote)
