"""From a collaboration definition to what each side of a session accepts.

One composition root: nodes and the coordinator both build their peer policy
and their attester here, so the two sides cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

from sgxcloud.cleanroom.definition import Definition, EnclavePin
from sgxcloud.cleanroom.transport.binding import (
    GRAMINE_ATTESTATION,
    Attester,
    GramineAttester,
    PeerPolicy,
    SimulatedAttester,
    verifier_for,
)
from sgxcloud.cleanroom.transport.errors import PeerRefused
from sgxcloud.sgx.gramine import GramineAttestation
from sgxcloud.sgx.identity import EnclaveIdentity

ROLES = ("coordinator", "node")


def _pin(definition: Definition, role: str) -> EnclavePin:
    if role not in ROLES:
        raise ValueError(f"unknown enclave role {role!r}")
    return getattr(definition.enclaves, role)


SIMULATION_OPT_IN = "--allow-simulated"
"""The command-line flag by which a process itself accepts SIMULATED peers."""

SIMULATION_WARNING = (
    "SIMULATED attestation accepted: no SGX protects anything here. Any process can "
    "pose as a node or the coordinator, receive the re-keying key and data, and invert "
    "keyed identifiers. Demos and tests only, never real data."
)
"""The banner every process that accepts SIMULATED peers shows (and logs)."""


def peer_policy(
    definition: Definition, peer_role: str, collateral_source=None, *, allow_simulated: bool = False
) -> PeerPolicy:
    """What a peer in ``peer_role`` must prove, exactly as the definition pins it.

    SIMULATED evidence is accepted only when the definition allows it *and*
    this process was told so itself (``allow_simulated``, from its own
    command line): a definition copied from the example, which allows
    simulation, must never be enough on its own.
    """
    pin = _pin(definition, peer_role)
    refusal = ""
    if definition.enclaves.allow_simulated and not allow_simulated:
        refusal = (
            f"the definition allows simulation but this process was not started "
            f"with {SIMULATION_OPT_IN} (never trusted by accident)"
        )
    return PeerPolicy(
        definition_hash=definition.definition_hash(),
        mrenclaves=frozenset({pin.mrenclave}),
        allow_simulation=definition.enclaves.allow_simulated and allow_simulated,
        simulation_refusal=refusal,
        verifier=verifier_for(collateral_source),
        allowed_tcb_statuses=frozenset(definition.enclaves.allowed_tcb_statuses),
        tolerated_advisories=frozenset(definition.enclaves.tolerated_advisories),
        pin=pin.matches,
    )


def simulated_identity(
    definition: Definition, role: str, mrenclave: str | None = None
) -> EnclaveIdentity:
    """The identity a SIMULATED enclave of ``role`` claims (the pinned one unless
    overridden, which tests use to play an enclave running other code)."""
    pin = _pin(definition, role)
    return EnclaveIdentity(
        mrenclave=(mrenclave or pin.mrenclave).lower(),
        mrsigner=pin.mrsigner or "0" * 64,
        isvprodid=pin.isvprodid or 0,
        isvsvn=pin.min_isvsvn or 0,
        debug=False,
    )


def local_attester(
    definition: Definition,
    role: str,
    *,
    simulate: bool,
    mrenclave: str | None = None,
    attestation_root: Path = GRAMINE_ATTESTATION,
) -> Attester:
    """Evidence source for this process: DCAP quotes inside Gramine, or
    SIMULATED evidence when asked for (never as a silent fallback: a
    definition that forbids simulation then makes every peer refuse us)."""
    if simulate:
        return SimulatedAttester(simulated_identity(definition, role, mrenclave))
    device = GramineAttestation(attestation_root)
    if device.available():
        # An enclave built without remote attestation: say so now, not at a peer's refusal.
        reason = device.why_not_attestable()
        if reason is not None:
            raise PeerRefused(f"no SGX attestation here: {reason}")
        return GramineAttester(attestation_root)
    raise PeerRefused(
        f"no SGX attestation is available here ({attestation_root} is missing); "
        "run inside a Gramine enclave, or with --simulate for SIMULATED evidence"
    )
