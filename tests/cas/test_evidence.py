"""Evidence verification against the real Intel-signed quotes in ../shared/testdata/dcap."""

from __future__ import annotations

import inspect
import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sgxcloud.cas.evidence as evidence_api
from sgxcloud.cas.collateral import FileCollateral
from sgxcloud.cas.errors import CollateralError, EvidenceError, MalformedEvidenceError
from sgxcloud.cas.evidence import (
    SIMULATED_FORMAT,
    SIMULATED_WARNING,
    DcapVerifier,
    DefaultVerifier,
    Evidence,
    RejectingVerifier,
    SimulatedVerifier,
    check_evidence,
    load_evidence,
    make_simulated_evidence,
)
from sgxcloud.errors import InputError, SgxcloudError
from sgxcloud.sgx import quote_layout as L
from sgxcloud.sgx.identity import EnclaveIdentity
from sgxcloud.sgx.quote import parse_sgx_quote

SIGNED_END = L.SIGNATURE_DATA_LENGTH_OFFSET  # header + report body: bytes [0, 432)


def flipped(raw: bytes, position: int, mask: int = 0x01) -> Evidence:
    data = bytearray(raw)
    data[position] ^= mask
    return Evidence("dcap", bytes(data))


# -- the real SGX quote -------------------------------------------------------


def test_real_quote_matches_readme(sgx_verifier, sgx_quote, vectors):
    verified = sgx_verifier.verify(load_evidence(sgx_quote), vectors.sgx_now)
    assert verified.tcb_status == vectors.status == "ConfigurationAndSWHardeningNeeded"
    assert verified.advisory_ids == vectors.advisories
    assert verified.identity.mrenclave == vectors.mrenclave
    assert verified.identity.mrsigner == vectors.mrsigner
    assert (verified.identity.isvprodid, verified.identity.isvsvn) == (0, 0)
    assert verified.identity.debug is False
    assert verified.identity.attributes == "0500000000000000e700000000000000"
    assert verified.report_data == vectors.report_data
    assert verified.report_data[:13] == b"Hello, world!" and len(verified.report_data) == 64
    assert verified.simulated is False
    assert verified.quote_version == 3
    assert verified.fmspc == "00A067110000"
    assert verified.verified_at == vectors.sgx_now


@pytest.mark.parametrize("offset", [0, 1, 3600, 86400, None])
def test_valid_throughout_the_collateral_window(sgx_verifier, sgx_quote, vectors, offset):
    start, end = vectors.sgx_window
    now = end - 1 if offset is None else start + offset
    assert sgx_verifier.verify(Evidence("dcap", sgx_quote), now).tcb_status == vectors.status


@pytest.mark.parametrize(
    ("delta", "code"),
    [
        ("end", "collateral-expired"),  # nextUpdate itself is already too late
        ("end+1", "collateral-expired"),
        ("year", "collateral-expired"),
        ("start-1", "collateral-not-yet-valid"),
        ("epoch", "collateral-not-yet-valid"),
    ],
)
def test_collateral_outside_its_window_is_rejected(sgx_verifier, sgx_quote, vectors, delta, code):
    start, end = vectors.sgx_window
    now = {"end": end, "end+1": end + 1, "year": end + 365 * 86400,
           "start-1": start - 1, "epoch": 0}[delta]  # fmt: skip
    with pytest.raises(EvidenceError) as caught:
        sgx_verifier.verify(Evidence("dcap", sgx_quote), now)
    assert caught.value.code == code
    assert "collateral" in str(caught.value)


def test_dcap_qvl_own_expiry_verdicts_are_translated(sgx_quote, sgx_collateral_path, vectors):
    """Past our window check, dcap-qvl's own messages still map to our verdicts."""
    import dcap_qvl

    collateral = dcap_qvl.QuoteCollateralV3.from_json(sgx_collateral_path.read_text())
    with pytest.raises(ValueError, match="expired"):
        dcap_qvl.verify(sgx_quote, collateral, vectors.sgx_window[1] + 1)
    from sgxcloud.cas.evidence.dcap import _verdict

    for message, code in [
        ("Verification failed: TCBInfo expired", "collateral-expired"),
        ("Verification failed: CrlExpired { time: 1, next_update: 0 }", "collateral-expired"),
        ("Verification failed: TCBInfo issue date is in the future", "collateral-not-yet-valid"),
        ("Verification failed: ISV enclave report signature is invalid", "signature-invalid"),
        ("Verification failed: something new", "invalid"),
    ]:
        error = _verdict(ValueError(message))
        assert error.code == code
        assert "Verification failed" not in str(error)


@pytest.mark.parametrize(
    "position",
    [
        L.ATTESTATION_KEY_TYPE_OFFSET + 1,
        L.TEE_TYPE_OFFSET + 2,
        8,  # QE SVN
        12,  # QE vendor id
        28,  # user data
        L.CPUSVN_OFFSET,
        L.ATTRIBUTES_OFFSET,  # the debug bit's byte
        L.MRENCLAVE_OFFSET,
        L.MRENCLAVE_OFFSET + 31,
        L.MRSIGNER_OFFSET + 5,
        L.ISVPRODID_OFFSET,
        L.ISVSVN_OFFSET,
        L.REPORT_DATA_OFFSET,
        L.REPORT_DATA_OFFSET + 13,
        SIGNED_END - 1,
    ],
)
def test_one_flipped_byte_in_the_signed_region_is_rejected(sgx_verifier, sgx_quote, vectors,
                                                           position):  # fmt: skip
    with pytest.raises(EvidenceError):
        sgx_verifier.verify(flipped(sgx_quote, position), vectors.sgx_now)


def test_flipped_report_body_says_signature_invalid(sgx_verifier, sgx_quote, vectors):
    with pytest.raises(EvidenceError) as caught:
        sgx_verifier.verify(flipped(sgx_quote, L.REPORT_DATA_OFFSET), vectors.sgx_now)
    assert caught.value.code == "signature-invalid"
    assert "signature invalid" in str(caught.value)
    # dcap-qvl's own words stay in ``detail`` for operators, out of the message.
    assert caught.value.detail == "ISV enclave report signature is invalid"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(0, SIGNED_END - 1), mask=st.integers(1, 255))
def test_any_change_in_the_signed_region_is_rejected(sgx_verifier, sgx_quote, vectors,
                                                     position, mask):  # fmt: skip
    with pytest.raises(EvidenceError):
        sgx_verifier.verify(flipped(sgx_quote, position, mask), vectors.sgx_now)


def test_signature_and_certification_data_are_checked(sgx_verifier, sgx_quote, vectors):
    """Flips in the ECDSA signature, attestation key, QE report and PCK leaf all fail."""
    sig = L.SIGNATURE_DATA_OFFSET
    for position in (sig, sig + 64, sig + 128, sig + 200, sig + 584, 1200, 2000, 2600):
        with pytest.raises(EvidenceError):
            sgx_verifier.verify(flipped(sgx_quote, position), vectors.sgx_now)


def test_truncated_quote_is_rejected(sgx_verifier, sgx_quote, vectors):
    for length in (48, 100, SIGNED_END, SIGNED_END + 4, len(sgx_quote) // 2, len(sgx_quote) - 1):
        with pytest.raises(EvidenceError):
            sgx_verifier.verify(Evidence("dcap", sgx_quote[:length]), vectors.sgx_now)


def test_tampered_collateral_is_rejected(sgx_quote, sgx_collateral_path, tmp_path, vectors):
    document = json.loads(sgx_collateral_path.read_text())
    document["tcb_info"] = document["tcb_info"].replace(
        '"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18', 1
    )
    path = tmp_path / "collateral.json"
    path.write_text(json.dumps(document))
    with pytest.raises(EvidenceError):
        DcapVerifier(FileCollateral(path)).verify(Evidence("dcap", sgx_quote), vectors.sgx_now)


def test_collateral_of_another_platform_is_rejected(testdata, sgx_quote, vectors):
    verifier = DcapVerifier(FileCollateral(testdata / "tdx_quote_collateral.json"))
    with pytest.raises(EvidenceError):
        verifier.verify(Evidence("dcap", sgx_quote), vectors.sgx_now)


# -- TDX and parse-only quotes --------------------------------------------------


def test_tdx_quote_is_verified_then_refused_as_not_an_sgx_enclave(testdata, vectors):
    """Decision (docs/cas/evidence.md): a TDX quote is checked, then refused cleanly."""
    verifier = DefaultVerifier(FileCollateral(testdata / "tdx_quote_collateral.json"))
    quote = (testdata / "tdx_quote").read_bytes()
    evidence = load_evidence(quote)
    assert evidence.format == "dcap"
    with pytest.raises(EvidenceError) as caught:
        verifier.verify(evidence, vectors.tdx_now)
    assert caught.value.code == "not-sgx-enclave"
    assert "TDX" in str(caught.value) and "UpToDate" in str(caught.value)  # crypto passed
    # A tampered TDX quote fails on its signature, before the SGX question arises.
    with pytest.raises(EvidenceError) as tampered:
        verifier.verify(flipped(quote, 200), vectors.tdx_now)
    assert tampered.value.code == "signature-invalid"


def test_cosmian_quote_parse_only_identity_matches_readme(testdata):
    parsed = parse_sgx_quote((testdata / "sgx_quote_cosmian.dat").read_bytes())
    assert parsed.header.version == 3 and parsed.header.tee == "SGX"
    identity = parsed.identity
    assert identity.mrenclave == "e413a4ed616c7a79634d5ca05a2fda746a1f0c71349a80b25a02828846fab90e"
    assert identity.mrsigner == "ac2c9fa87e4c91768b1d0c47169466c50d5a98c790639fbaefe7352a59919980"
    assert (identity.isvprodid, identity.isvsvn, identity.debug) == (1, 10, False)
    assert identity.attributes == "0500000000000000e700000000000000"


def test_cosmian_quote_without_its_collateral_is_rejected(testdata, sgx_verifier, vectors):
    evidence = load_evidence(testdata / "sgx_quote_cosmian.dat")
    with pytest.raises(EvidenceError):
        sgx_verifier.verify(evidence, vectors.sgx_now)


# -- loading ----------------------------------------------------------------------


def test_load_evidence_from_path_bytes_and_hex(testdata, sgx_quote):
    assert load_evidence(testdata / "sgx_quote") == Evidence("dcap", sgx_quote)
    assert load_evidence(str(testdata / "sgx_quote")).raw == sgx_quote
    assert load_evidence(sgx_quote.hex().encode() + b"\n").raw == sgx_quote


@pytest.mark.parametrize(
    "raw",
    [b"", b"hello", b"\x03\x00" * 10, b"{not json", b'{"format": "other"}', b"[1, 2]",
     b"\x02\x00\x02\x00" + bytes(500), b"\x03\x00\x02\x00\x99\x00\x00\x00" + bytes(500)],
)  # fmt: skip
def test_load_evidence_rejects_what_is_not_evidence(raw):
    with pytest.raises(MalformedEvidenceError) as caught:
        load_evidence(raw)
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value)


def test_load_evidence_says_which_file_is_missing(tmp_path):
    with pytest.raises(InputError, match=r"cannot read evidence file .*missing"):
        load_evidence(tmp_path / "missing")


def test_collateral_json_is_not_evidence(sgx_collateral_path):
    with pytest.raises(MalformedEvidenceError, match=SIMULATED_FORMAT):
        load_evidence(sgx_collateral_path)


# -- simulated evidence -------------------------------------------------------------

IDENTITY = EnclaveIdentity("ab" * 32, "cd" * 32, isvprodid=3, isvsvn=4, debug=False)


def test_simulated_evidence_is_labelled_and_round_trips():
    evidence = make_simulated_evidence(IDENTITY, b"nonce")
    document = json.loads(evidence.raw)
    assert document["format"] == SIMULATED_FORMAT
    assert document["WARNING"] == SIMULATED_WARNING
    assert evidence.format == "simulated" and evidence.simulated
    loaded = load_evidence(evidence.raw)
    assert loaded.format == "simulated"
    verified = DefaultVerifier().verify(loaded, 123)
    assert verified.simulated is True
    assert verified.tcb_status == "Simulated"
    assert verified.identity == replace(IDENTITY, attributes="0500000000000000e700000000000000")
    assert verified.report_data == b"nonce".ljust(64, b"\0")
    assert verified.to_dict()["simulated"] is True


def test_simulated_debug_identity_sets_the_debug_attribute():
    evidence = make_simulated_evidence(replace(IDENTITY, debug=True), b"")
    verified = SimulatedVerifier().verify(evidence, 0)
    assert verified.identity.debug is True
    assert int(verified.identity.attributes[:2], 16) & 0x02


def test_simulated_evidence_never_passes_as_a_quote(sgx_verifier):
    evidence = make_simulated_evidence(IDENTITY, b"")
    assert not evidence.raw.startswith(b"\x03\x00")
    with pytest.raises(EvidenceError) as caught:
        DcapVerifier(FileCollateral(sgx_verifier.collateral_source.path)).verify(evidence, 0)
    assert caught.value.code == "wrong-format"
    # ...and a quote relabelled as simulated is not simulated evidence either.
    with pytest.raises(MalformedEvidenceError):
        SimulatedVerifier().verify(Evidence("simulated", b"\x03\x00" + bytes(600)), 0)


@pytest.mark.parametrize(
    "change",
    [
        {"WARNING": "all good"},
        {"format": "sgxcloud-simulated-v2"},
        {"debug": True},  # disagrees with the attributes' debug bit
        {"mrenclave": "AB" * 32},
        {"mrenclave": "ab" * 31},
        {"isvsvn": 70000},
        {"isvprodid": True},
        {"report_data": "00" * 63},
        {"extra": 1},
    ],
)
def test_malformed_simulated_documents_are_rejected(change):
    document = json.loads(make_simulated_evidence(IDENTITY, b"").raw)
    document.update(change)
    with pytest.raises(MalformedEvidenceError):
        SimulatedVerifier().verify(Evidence("simulated", json.dumps(document).encode()), 0)


def _dumped_whole(identity: EnclaveIdentity, report_data: bytes) -> bytes:
    """The simulated document as one json.dumps of all its fields (the reference layout)."""
    default = (
        "0700000000000000e700000000000000"
        if identity.debug
        else ("0500000000000000e700000000000000")
    )
    document = {
        "format": SIMULATED_FORMAT,
        "WARNING": SIMULATED_WARNING,
        "mrenclave": identity.mrenclave.lower(),
        "mrsigner": identity.mrsigner.lower(),
        "isvprodid": identity.isvprodid,
        "isvsvn": identity.isvsvn,
        "debug": identity.debug,
        "attributes": (identity.attributes or default).lower(),
        "report_data": report_data.ljust(64, b"\0").hex(),
    }
    return json.dumps(document, indent=2, ensure_ascii=False).encode() + b"\n"


@pytest.mark.parametrize(
    "identity",
    [
        IDENTITY,
        replace(IDENTITY, debug=True),
        replace(
            IDENTITY,
            mrenclave="AB" * 32,
            mrsigner="0F" * 32,
            isvprodid=65535,
            isvsvn=0,
            attributes="0500000000000000E700000000000000",
        ),
    ],
)
def test_simulated_evidence_is_the_whole_document_whatever_the_report_data(identity):
    """Made from a per-identity template (the benchmark's enclaves make one per round trip),
    the evidence is byte for byte the document dumped whole, for every report data in turn."""
    for report_data in (b"", b"nonce", bytes(range(64)), b"\xff" * 64, b'"report_data": "'):
        evidence = make_simulated_evidence(identity, report_data)
        assert evidence.raw == _dumped_whole(identity, report_data)
        verified = SimulatedVerifier().verify(evidence, 0)
        assert verified.report_data == report_data.ljust(64, b"\0")


def test_an_identity_simulated_evidence_cannot_claim_is_refused_every_time():
    bad = replace(IDENTITY, mrenclave="zz" * 32)
    for _ in range(2):  # a refusal is not remembered as a template
        with pytest.raises(MalformedEvidenceError, match="mrenclave"):
            make_simulated_evidence(bad, b"")


def test_report_data_longer_than_64_bytes_is_refused():
    with pytest.raises(EvidenceError):
        make_simulated_evidence(IDENTITY, bytes(65))


# -- composition and reports ------------------------------------------------------------


def test_default_verifier_without_collateral_cannot_check_quotes(sgx_quote):
    with pytest.raises(CollateralError):
        DefaultVerifier().verify(Evidence("dcap", sgx_quote), 0)


def test_rejecting_verifier_rejects_everything(sgx_quote):
    for evidence in (Evidence("dcap", sgx_quote), make_simulated_evidence(IDENTITY, b"")):
        with pytest.raises(EvidenceError) as caught:
            RejectingVerifier().verify(evidence, 0)
        assert caught.value.code == "disabled"


def test_check_evidence_without_policy(sgx_verifier, sgx_quote, vectors):
    report = check_evidence(Evidence("dcap", sgx_quote), sgx_verifier, vectors.sgx_now)
    assert report.accepted and report.exit_code == 0
    data = report.to_dict()
    assert data["verified"] is True and data["simulated"] is False
    assert data["report_data"] == vectors.report_data.hex()

    rejected = check_evidence(flipped(sgx_quote, 200), sgx_verifier, vectors.sgx_now)
    assert rejected.verdict == "rejected" and rejected.codes == ["signature-invalid"]
    # The claims of a rejected quote are shown, marked unverified.
    assert rejected.to_dict()["verified"] is False
    assert rejected.to_dict()["mrenclave"] == vectors.mrenclave


def test_check_evidence_never_accepts_simulated_without_a_policy():
    report = check_evidence(make_simulated_evidence(IDENTITY, b""), DefaultVerifier(), 0)
    assert report.verdict == "rejected" and report.codes == ["simulated"]
    data = report.to_dict()
    assert data["simulated"] is True and data["verified"] is False
    assert data["WARNING"] == SIMULATED_WARNING


def test_errors_are_sgxcloud_errors_with_exit_codes():
    assert issubclass(EvidenceError, SgxcloudError) and EvidenceError.exit_code == 1
    assert MalformedEvidenceError.exit_code == 2 and issubclass(
        MalformedEvidenceError, EvidenceError
    )


def test_public_api_is_exactly_all():
    public = {
        name
        for name, value in vars(evidence_api).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(evidence_api.__all__) == public


# -- checked before any collateral is fetched (sgxcloud.cas.pck) -----------------------


def test_pinned_root_is_intels_sgx_root_ca(testdata):
    from cryptography import x509

    from sgxcloud.cas.pck import INTEL_SGX_ROOT_CA_PEM

    pinned = x509.load_pem_x509_certificate(INTEL_SGX_ROOT_CA_PEM)
    assert pinned == x509.load_der_x509_certificate((testdata / "TrustedRootCA.der").read_bytes())


@pytest.mark.parametrize(
    ("name", "platform"),
    [
        ("sgx_quote", ("sgx", "00A067110000", "processor")),
        ("tdx_quote", ("tdx", "B0C06F000000", "platform")),
        ("sgx_quote_cosmian.dat", ("sgx", "30606A000000", "platform")),
    ],
)
def test_precheck_reads_the_platform_of_real_quotes(testdata, vectors, name, platform):
    """FMSPC and CA type as the test data README states, from the verified PCK leaf."""
    from sgxcloud.cas.pck import precheck

    found = precheck((testdata / name).read_bytes(), vectors.sgx_now)
    assert (found.tee, found.fmspc, found.ca) == platform


def test_precheck_refuses_what_dcap_qvl_refuses_without_collateral(sgx_quote, vectors):
    from sgxcloud.cas.evidence.dcap import _verdict
    from sgxcloud.cas.pck import PckCheckError, precheck

    sig = L.SIGNATURE_DATA_OFFSET
    for position, code in [
        (L.REPORT_DATA_OFFSET, "signature-invalid"),  # report body: attestation key signature
        (sig + 10, "signature-invalid"),  # the ISV signature itself
        (sig + 128 + 10, "signature-invalid"),  # QE report: PCK signature
        (2000, "certificate-invalid"),  # inside the PCK leaf
    ]:
        with pytest.raises(PckCheckError) as caught:
            precheck(flipped(sgx_quote, position).raw, vectors.sgx_now)
        assert _verdict(caught.value).code == code
