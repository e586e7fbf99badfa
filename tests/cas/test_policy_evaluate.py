"""Policy decisions on the real Intel-signed quote: every reason, never just the first."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sgxcloud.cas.evidence import Evidence, make_simulated_evidence
from sgxcloud.cas.policy import evaluate, load_policy
from sgxcloud.sgx.identity import EnclaveIdentity

OTHER = "11" * 32
CERT = "cd" * 32


@pytest.fixture(scope="module")
def verified(sgx_verifier, sgx_quote, vectors):
    return sgx_verifier.verify(Evidence("dcap", sgx_quote), vectors.sgx_now)


def service_for(identities, **fields):
    """The one service of a policy built around the given identities."""
    document = {
        "name": "shop",
        "access": {"owners": [{"name": "alice", "client_certificate_sha256": CERT}]},
        "services": {"web": {"identities": identities, **fields}},
    }
    return load_policy(document).services["web"]


TOLERANT = {
    "tolerated_tcb_statuses": ["UpToDate", "ConfigurationAndSWHardeningNeeded"],
    "tolerated_advisories": ["INTEL-SA-00289", "INTEL-SA-00615"],
}


def test_policy_around_the_real_identity_accepts(verified, vectors):
    decision = evaluate(service_for([{"mrenclave": vectors.mrenclave}], **TOLERANT), verified)
    assert decision.accepted and decision.reasons == [] and decision.codes == []
    signer = [{"mrsigner": vectors.mrsigner, "isvprodid": 0, "min_isvsvn": 0}]
    assert evaluate(service_for(signer, **TOLERANT), verified).accepted


@pytest.mark.parametrize(
    ("identity", "code", "words"),
    [
        ({"mrenclave": OTHER}, "mrenclave", "MRENCLAVE 33d8736d"),
        ({"mrsigner": OTHER, "isvprodid": 0, "min_isvsvn": 0}, "mrsigner", "MRSIGNER 815f42f1"),
        ("product", "isvprodid", "ISVPRODID 0 is not the accepted product 7"),
        ("svn", "isvsvn", "ISVSVN 0 is below the minimum 1"),
    ],
)
def test_wrong_identity_is_rejected_with_that_reason(verified, vectors, identity, code, words):
    if identity == "product":
        identity = {"mrsigner": vectors.mrsigner, "isvprodid": 7, "min_isvsvn": 0}
    elif identity == "svn":
        identity = {"mrsigner": vectors.mrsigner, "isvprodid": 0, "min_isvsvn": 1}
    decision = evaluate(service_for([identity], **TOLERANT), verified)
    assert not decision.accepted
    assert decision.codes == [code]
    assert words in decision.reasons[0]


def test_debug_enclave_is_rejected_unless_allowed(verified, vectors):
    # The real quote is a production enclave; its debug twin differs only in that bit.
    debug = replace(verified, identity=replace(verified.identity, debug=True))
    strict = service_for([{"mrenclave": vectors.mrenclave}], **TOLERANT)
    decision = evaluate(strict, debug)
    assert decision.codes == ["debug"] and "debug" in decision.reasons[0]
    relaxed = service_for([{"mrenclave": vectors.mrenclave}], allow_debug=True, **TOLERANT)
    assert evaluate(relaxed, debug).accepted


def test_untolerated_tcb_is_rejected_unless_tolerated(verified, vectors):
    identity = [{"mrenclave": vectors.mrenclave}]
    decision = evaluate(service_for(identity), verified)  # defaults: UpToDate, no advisories
    assert decision.codes == ["tcb_status", "advisory"]
    assert (
        "ConfigurationAndSWHardeningNeeded is not tolerated (tolerated: UpToDate)"
        in (decision.reasons[0])
    )
    assert decision.reasons[1] == "advisories not tolerated: INTEL-SA-00289, INTEL-SA-00615"

    status_only = service_for(
        identity, tolerated_tcb_statuses=["ConfigurationAndSWHardeningNeeded"]
    )
    assert evaluate(status_only, verified).codes == ["advisory"]
    one_advisory = service_for(
        identity,
        tolerated_tcb_statuses=["ConfigurationAndSWHardeningNeeded"],
        tolerated_advisories=["INTEL-SA-00289"],
    )
    assert evaluate(one_advisory, verified).reasons == ["advisories not tolerated: INTEL-SA-00615"]
    any_advisory = service_for(
        identity,
        tolerated_tcb_statuses=["ConfigurationAndSWHardeningNeeded"],
        tolerated_advisories=["*"],
    )
    assert evaluate(any_advisory, verified).accepted


def test_outdated_platform_is_rejected_unless_tolerated(verified, vectors):
    outdated = replace(verified, tcb_status="OutOfDate", advisory_ids=())
    identity = [{"mrenclave": vectors.mrenclave}]
    assert evaluate(service_for(identity), outdated).codes == ["tcb_status"]
    tolerant = service_for(identity, tolerated_tcb_statuses=["UpToDate", "OutOfDate"])
    assert evaluate(tolerant, outdated).accepted


def test_every_reason_is_listed(verified, vectors):
    debug = replace(verified, identity=replace(verified.identity, debug=True))
    identity = [{"mrsigner": OTHER, "isvprodid": 9, "min_isvsvn": 3}]
    decision = evaluate(service_for(identity), debug)
    assert decision.codes == [
        "mrsigner", "isvprodid", "isvsvn", "debug", "tcb_status", "advisory",
    ]  # fmt: skip
    assert len(decision.reasons) == 6


def test_any_accepted_identity_suffices(verified, vectors):
    identities = [
        {"mrenclave": OTHER},
        {"mrsigner": OTHER, "isvprodid": 0, "min_isvsvn": 0},
        {"mrsigner": vectors.mrsigner, "isvprodid": 0, "min_isvsvn": 0},
    ]
    assert evaluate(service_for(identities, **TOLERANT), verified).accepted


def test_closest_signer_entry_explains_a_rejection(verified, vectors):
    identities = [
        {"mrenclave": OTHER},
        {"mrsigner": vectors.mrsigner, "isvprodid": 5, "min_isvsvn": 0},
        {"mrsigner": vectors.mrsigner, "isvprodid": 0, "min_isvsvn": 2},
    ]
    decision = evaluate(service_for(identities, **TOLERANT), verified)
    assert decision.codes == ["mrenclave", "isvprodid"]


# -- simulated evidence --------------------------------------------------------------


@pytest.fixture
def simulated(vectors):
    from sgxcloud.cas.evidence import SimulatedVerifier

    identity = EnclaveIdentity(vectors.mrenclave, vectors.mrsigner, 0, 0, debug=False)
    evidence = make_simulated_evidence(identity, b"nonce")
    return SimulatedVerifier().verify(evidence, vectors.sgx_now)


def test_simulated_evidence_rejected_under_a_hardware_only_policy(simulated, vectors):
    decision = evaluate(service_for([{"mrenclave": vectors.mrenclave}], **TOLERANT), simulated)
    assert decision.codes == ["simulated"]
    assert "simulated evidence" in decision.reasons[0]


def test_simulated_evidence_accepted_only_when_allowed(simulated, vectors):
    allowing = service_for([{"mrenclave": vectors.mrenclave}], allow_simulated=True)
    decision = evaluate(allowing, simulated)
    assert decision.accepted  # there is no TCB to judge, so TCB tolerances do not apply
    wrong = service_for([{"mrenclave": OTHER}], allow_simulated=True)
    assert evaluate(wrong, simulated).codes == ["mrenclave"]  # identity still checked


def test_service_without_identities_accepts_nothing(verified, simulated, vectors):
    """Defence in depth: the schema needs one identity, evaluate() must not rely on it."""
    empty = replace(service_for([{"mrenclave": vectors.mrenclave}], **TOLERANT), identities=())
    decision = evaluate(empty, verified)
    assert not decision.accepted and decision.codes == ["identity"]
    lax = replace(empty, allow_simulated=True, allow_debug=True)
    assert evaluate(lax, simulated).codes == ["identity"]


def test_exporter_strength_floor_on_the_real_quote(verified, vectors):
    """An exported secret needs evidence one of its exporter's services accepts, identity aside."""
    from sgxcloud.cas.policy import evaluate_strength

    def exporter(*services):  # type: ignore[no-untyped-def]
        document = {
            "name": "db",
            "access": {"owners": [{"name": "alice", "client_certificate_sha256": CERT}]},
            "services": {
                f"s{i}": {"identities": [{"mrenclave": OTHER}], **fields}
                for i, fields in enumerate(services)
            },
        }
        return load_policy(document)

    # The real quote's platform is ConfigurationAndSWHardeningNeeded with two advisories.
    strict = exporter({})
    decision = evaluate_strength(strict, verified)
    assert not decision.accepted and set(decision.codes) == {"tcb_status", "advisory"}
    # No service uses a secret here: every service's floor applies (the strictest).
    assert not evaluate_strength(exporter({}, TOLERANT), verified).accepted
    assert evaluate_strength(exporter(TOLERANT, TOLERANT), verified).accepted
    # Identity is not part of the floor: OTHER is not the quote's MRENCLAVE.
    assert "mrenclave" not in evaluate_strength(strict, verified).codes
    simulated = replace(verified, simulated=True)
    assert evaluate_strength(exporter(TOLERANT), simulated).codes == ["simulated"]
    assert evaluate_strength(exporter({"allow_simulated": True}), simulated).accepted
    debug = replace(verified, identity=replace(verified.identity, debug=True))
    assert "debug" in evaluate_strength(exporter(TOLERANT), debug).codes
