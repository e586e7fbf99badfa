"""The DCAP verdict cache (sgxcloud.cas.evidence.dcap): dcap-qvl's verdict, reused only
where the same quote bytes, collateral and time would give it again.

Every test compares the cached verifier with an uncached one (``VerdictCache(capacity=0)``:
dcap-qvl on every quote) on the real Intel-signed quotes and collateral of
../shared/testdata/dcap, and counts how often dcap-qvl itself runs (its real
``verify``, wrapped to count calls).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from sgxcloud.cas import pck
from sgxcloud.cas.collateral import (
    ValidityWindow,
    collateral_facts,
    collateral_from_json,
    collateral_window,
)
from sgxcloud.cas.errors import EvidenceError
from sgxcloud.cas.evidence import DcapVerifier, Evidence, VerifiedEvidence
from sgxcloud.cas.evidence.dcap import VerdictCache, reuse_key, window_sources
from sgxcloud.sgx import quote_layout as L
from sgxcloud.sgx.quote import read_header

BODY = range(L.REPORT_BODY_OFFSET, L.SIGNATURE_DATA_LENGTH_OFFSET)  # [48, 432)
ISV_SIGNATURE = range(L.SIGNATURE_DATA_OFFSET, L.SIGNATURE_DATA_OFFSET + 64)  # [436, 500)


class Fixed:
    """A collateral source handing out whichever collateral object the test sets."""

    def __init__(self, collateral: Any) -> None:
        self.collateral = collateral

    def get(self, quote: bytes, now: int) -> Any:
        return self.collateral


def load(path: Path, **changes: str) -> Any:
    document = json.loads(path.read_text())
    document.update(changes)
    return collateral_from_json(json.dumps(document), str(path))


def counted(verifier: DcapVerifier) -> list[int]:
    """Record each time ``verifier`` asks dcap-qvl (the real function still runs)."""
    calls: list[int] = []
    real = verifier._verify

    def verify(raw: bytes, collateral: Any, now: int) -> Any:
        calls.append(now)
        return real(raw, collateral, now)

    verifier._verify = verify
    return calls


def uncached(source: Any) -> DcapVerifier:
    return DcapVerifier(source, VerdictCache(capacity=0))


Outcome = tuple[str, Any, Any, Any]


def outcome(verifier: DcapVerifier, raw: bytes, now: int) -> Outcome:
    """Everything a caller learns: the verified evidence, or the verdict and its detail."""
    try:
        verified = verifier.verify(Evidence("dcap", raw), now)
    except EvidenceError as exc:
        return ("refused", exc.code, str(exc), exc.detail)
    assert isinstance(verified, VerifiedEvidence)
    return ("accepted", verified, None, None)


def flip(raw: bytes, position: int, mask: int = 0x01) -> bytes:
    data = bytearray(raw)
    data[position] ^= mask
    return bytes(data)


@pytest.fixture()
def sgx(testdata, sgx_quote, vectors):
    """A warm cached verifier over the SGX collateral, its source and dcap-qvl call log."""
    collateral = load(testdata / "sgx_quote_collateral.json")
    source = Fixed(collateral)
    verifier = DcapVerifier(source)
    calls = counted(verifier)
    assert outcome(verifier, sgx_quote, vectors.sgx_now)[0] == "accepted"
    assert (len(calls), len(verifier.verdicts)) == (1, 1)
    return verifier, source, calls


# -- the premise: dcap-qvl's collateral objects never change ----------------------------


def test_dcap_qvl_collateral_objects_cannot_be_changed(testdata):
    """``collateral_facts`` remembers a fingerprint per object: only sound while immutable."""
    collateral = load(testdata / "sgx_quote_collateral.json")
    before = collateral.to_json()
    for name in [*json.loads(before), "pck_certificate_chain"]:
        with pytest.raises(AttributeError):
            setattr(collateral, name, getattr(collateral, name, "x"))
    assert collateral.to_json() == before


# -- exactly dcap-qvl's verdict ----------------------------------------------------------


@pytest.mark.parametrize(
    ("quote", "collateral", "when", "reused"),
    [
        ("sgx_quote", "sgx_quote_collateral.json", "sgx_now", True),
        ("tdx_quote", "tdx_quote_collateral.json", "tdx_now", False),  # never reused
        ("sgx_quote_cosmian.dat", "sgx_quote_collateral.json", "sgx_now", False),  # refused
    ],
)
def test_cached_path_gives_exactly_dcap_qvls_verdict_for_every_sample(
    testdata, vectors, quote, collateral, when, reused
):
    import dcap_qvl

    raw, now = (testdata / quote).read_bytes(), getattr(vectors, when)
    source = Fixed(load(testdata / collateral))
    expected = outcome(uncached(source), raw, now)
    verifier = DcapVerifier(source)
    calls = counted(verifier)
    assert [outcome(verifier, raw, now) for _ in range(3)] == [expected] * 3
    assert len(calls) == (1 if reused else 3)
    assert verifier.verdicts.hits == (2 if reused else 0)
    if expected[0] == "accepted":  # and dcap-qvl's own words, straight from the library
        report = dcap_qvl.verify(raw, source.collateral, now)
        assert (expected[1].tcb_status, expected[1].advisory_ids) == (
            report.status,
            tuple(report.advisory_ids),
        )


def test_a_new_quote_of_a_known_platform_pays_the_signature_checks_but_not_dcap_qvl(
    sgx, sgx_quote, vectors
):
    """What production sees: same platform, a quote never seen before (forgotten here)."""
    verifier, _, calls = sgx
    pck.forget_checked_quotes()
    verified = verifier.verify(Evidence("dcap", sgx_quote), vectors.sgx_now)
    assert len(calls) == 1  # dcap-qvl ran only for the first quote
    assert (verified.tcb_status, verified.advisory_ids) == (vectors.status, vectors.advisories)
    assert verified.identity.mrenclave == vectors.mrenclave  # parsed from this quote's bytes
    assert verified.report_data == vectors.report_data


def test_every_flipped_byte_is_refused_exactly_when_an_uncached_verifier_refuses_it(
    sgx, sgx_quote, vectors
):
    """All 4600 positions, after a success has warmed the cache.

    Most flips break a signature that ``check_quote`` re-checks on every
    quote; the four bytes of the signature data length do not (dcap-qvl
    refuses them, the pre-check does not), and some PEM whitespace and
    root-copy flips pass both: all must end exactly as without the cache.
    """
    verifier, source, _ = sgx
    reference = uncached(source)
    different = [
        position
        for position in range(len(sgx_quote))
        if outcome(verifier, flipped := flip(sgx_quote, position), vectors.sgx_now)
        != outcome(reference, flipped, vectors.sgx_now)
    ]
    assert different == []
    # The bytes with nothing per quote about them are really in play: some are
    # refused only by dcap-qvl, some are accepted by both.
    assert outcome(verifier, flip(sgx_quote, 433), vectors.sgx_now)[0] == "refused"
    assert outcome(verifier, flip(sgx_quote, 1049), vectors.sgx_now)[0] == "accepted"


def test_the_key_covers_every_byte_but_the_report_body_and_isv_signature(sgx_quote):
    """Each header, length, key, QE report, QE signature, auth data and certificate byte."""
    digest = pck.platform_digest(sgx_quote)
    for position in range(len(sgx_quote)):
        same = pck.platform_digest(flip(sgx_quote, position)) == digest
        assert same == (position in BODY or position in ISV_SIGNATURE), position
    assert pck.platform_digest(sgx_quote + b"\0") != digest  # and what follows the data
    assert pck.check_quote(sgx_quote, 0).platform_digest == digest


def test_only_sgx_v3_quotes_of_non_debug_enclaves_are_ever_reused(testdata, sgx_quote):
    """TDX TCB levels and TD attributes come from the report body; debug enclaves are refused."""
    collateral = load(testdata / "sgx_quote_collateral.json")
    checked = pck.check_quote(sgx_quote, 0)
    assert reuse_key(sgx_quote, read_header(sgx_quote), checked, collateral) is not None
    tdx = (testdata / "tdx_quote").read_bytes()
    assert reuse_key(tdx, read_header(tdx), pck.check_quote(tdx, 0), collateral) is None
    debug = flip(sgx_quote, L.ATTRIBUTES_OFFSET, 0x02)
    assert reuse_key(debug, read_header(debug), checked, collateral) is None
    v4 = bytearray(sgx_quote)
    v4[L.VERSION_OFFSET] = 4
    assert reuse_key(bytes(v4), read_header(bytes(v4)), checked, collateral) is None


def test_a_debug_enclaves_quote_goes_to_dcap_qvl_even_after_its_platform_was_accepted(
    sgx, sgx_quote, vectors
):
    """As if ``check_quote`` had passed a debug enclave's quote of the warm platform.

    Nobody here can sign one, so the pre-check's result for the genuine quote
    is handed in with the debug bit set in the body; the cache must not
    answer for it (dcap-qvl refuses debug enclaves, and here the signature).
    """
    verifier, source, calls = sgx
    debug = flip(sgx_quote, L.ATTRIBUTES_OFFSET, 0x02)
    checked = pck.check_quote(sgx_quote, vectors.sgx_now)
    with pytest.raises(EvidenceError):
        verifier._judge(debug, read_header(debug), checked, source.collateral, vectors.sgx_now)
    assert len(calls) == 2


# -- the collateral is part of the key, by content ---------------------------------------


def _other_collateral(testdata: Path, sgx_quote: bytes) -> dict[str, dict[str, str]]:
    sgx = json.loads((testdata / "sgx_quote_collateral.json").read_text())
    tdx = json.loads((testdata / "tdx_quote_collateral.json").read_text())
    cosmian = pck_chain((testdata / "sgx_quote_cosmian.dat").read_bytes())
    return {
        # refused by dcap-qvl: the Platform CA's CRL says nothing of a Processor CA leaf
        "another PCK CRL": {
            "pck_crl": tdx["pck_crl"],
            "pck_crl_issuer_chain": tdx["pck_crl_issuer_chain"],
        },
        # refused: TCB info of another platform (FMSPC, TEE type)
        "another TCB info": {
            key: tdx[key] for key in ("tcb_info", "tcb_info_signature", "tcb_info_issuer_chain")
        },
        "altered TCB info": {
            "tcb_info": sgx["tcb_info"].replace(
                '"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18', 1
            )
        },
        # refused: dcap-qvl then checks the QE report against this chain, not the quote's
        "another platform's PCK chain": {"pck_certificate_chain": cosmian},
        # accepted: dcap-qvl never reads this chain, but it is another collateral
        "another PCK CRL issuer chain": {"pck_crl_issuer_chain": tdx["pck_crl_issuer_chain"]},
        # accepted: the quote's own chain, carried by the collateral
        "the quote's chain in the collateral": {"pck_certificate_chain": pck_chain(sgx_quote)},
    }


def pck_chain(raw: bytes) -> str:
    import dcap_qvl

    return dcap_qvl.parse_quote(raw).cert_chain_pem_bytes().decode()


@pytest.mark.parametrize(
    "change",
    [
        "another PCK CRL",
        "another TCB info",
        "altered TCB info",
        "another platform's PCK chain",
        "another PCK CRL issuer chain",
        "the quote's chain in the collateral",
    ],
)
def test_changed_collateral_misses_the_cache(sgx, testdata, sgx_quote, vectors, change):
    verifier, source, calls = sgx
    changes = _other_collateral(testdata, sgx_quote)[change]
    source.collateral = load(testdata / "sgx_quote_collateral.json", **changes)
    now = vectors.sgx_window[0] + 3600  # inside every piece's window, the TDX CRL's too
    expected = outcome(uncached(source), sgx_quote, now)
    assert outcome(verifier, sgx_quote, now) == expected
    assert len(calls) == 2  # dcap-qvl judged the changed collateral itself
    accepted = change in ("another PCK CRL issuer chain", "the quote's chain in the collateral")
    assert (expected[0] == "accepted") == accepted


def test_equal_collateral_in_another_object_is_the_same_key(sgx, testdata, sgx_quote, vectors):
    """Content, not identity: a PCCS re-assembling the same pieces keeps the verdict."""
    verifier, source, calls = sgx
    text = (testdata / "sgx_quote_collateral.json").read_text()
    source.collateral = collateral_from_json(json.dumps(json.loads(text), indent=3), "copy")
    assert outcome(verifier, sgx_quote, vectors.sgx_now)[0] == "accepted"
    assert len(calls) == 1


# -- time ---------------------------------------------------------------------------------


def _validity(certificate: x509.Certificate) -> ValidityWindow:
    return ValidityWindow(
        int(certificate.not_valid_before_utc.timestamp()),
        int(certificate.not_valid_after_utc.timestamp()),
    )


def test_the_window_holds_every_date_the_verdict_depended_on(testdata, sgx_quote, vectors):
    """Collateral dates, every collateral certificate, the PCK chain and the pinned root."""
    collateral = load(testdata / "sgx_quote_collateral.json")
    checked = pck.check_quote(sgx_quote, vectors.sgx_now)
    sources = [window for _, window in window_sources(checked, collateral)]
    assert collateral_window(collateral) in sources  # TCB info, QE identity, both CRLs
    quote_chain = [
        *x509.load_pem_x509_certificates(pck_chain(sgx_quote).encode()),
        x509.load_pem_x509_certificate(pck.INTEL_SGX_ROOT_CA_PEM),
    ]
    assert (
        ValidityWindow(
            max(_validity(c).not_before for c in quote_chain),
            min(_validity(c).not_after for c in quote_chain),
        )
        in sources
    )
    document = json.loads(collateral.to_json())
    for field in ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain"):
        for certificate in x509.load_pem_x509_certificates(document[field].encode()):
            assert _validity(certificate) in sources, field
    verifier = DcapVerifier(Fixed(collateral))
    verifier.verify(Evidence("dcap", sgx_quote), vectors.sgx_now)
    ((_, window, _),) = verifier.verdicts._entries.values()
    assert (window.not_before, window.not_after) == (
        max(w.not_before for w in sources),
        min(w.not_after for w in sources),
    )
    assert (window.not_before, window.not_after) == vectors.sgx_window  # the README's


def test_a_pck_certificate_carried_by_the_collateral_counts_too(testdata, sgx_quote, vectors):
    collateral = load(testdata / "sgx_quote_collateral.json",
                      pck_certificate_chain=pck_chain(sgx_quote))  # fmt: skip
    checked = pck.check_quote(sgx_quote, vectors.sgx_now)
    labels = [label for label, _ in window_sources(checked, collateral)]
    assert [label for label in labels if label.startswith("pck_certificate_chain")] == [
        "pck_certificate_chain[0]",
        "pck_certificate_chain[1]",
        "pck_certificate_chain[2]",
    ]


def test_a_time_outside_the_window_is_never_served_from_the_cache(sgx, sgx_quote, vectors):
    verifier, source, calls = sgx
    key = reuse_key(sgx_quote, read_header(sgx_quote), pck.check_quote(sgx_quote, 0),
                    source.collateral)  # fmt: skip
    start, end = vectors.sgx_window
    assert verifier.verdicts.get(key, start) is not None
    assert verifier.verdicts.get(key, end - 1) is not None
    assert verifier.verdicts.get(key, end) is None
    assert verifier.verdicts.get(key, start - 1) is None
    for now in (end, start - 1):  # and end to end: refused as collateral out of its window
        assert outcome(verifier, sgx_quote, now)[:2] == outcome(uncached(source), sgx_quote,
                                                                now)[:2]  # fmt: skip
    assert outcome(verifier, sgx_quote, start)[0] == "accepted"
    assert len(calls) == 1


def test_a_verdict_is_asked_again_after_its_maximum_age(testdata, sgx_quote, vectors):
    clock = [1000.0]
    verifier = DcapVerifier(
        Fixed(load(testdata / "sgx_quote_collateral.json")),
        VerdictCache(max_age=300.0, clock=lambda: clock[0]),
    )
    calls = counted(verifier)
    for elapsed in (0.0, 299.0, 300.0, 301.0, 599.0, 600.0):
        clock[0] = 1000.0 + elapsed
        assert outcome(verifier, sgx_quote, vectors.sgx_now)[0] == "accepted"
    assert len(calls) == 3  # at 0, at 300 (the first has aged out), at 600


def test_failures_are_never_cached(sgx, sgx_quote, vectors, testdata):
    verifier, source, calls = sgx
    verifier.verdicts.clear()
    changes = _other_collateral(testdata, sgx_quote)["another TCB info"]
    source.collateral = load(testdata / "sgx_quote_collateral.json", **changes)
    for _ in range(2):
        assert outcome(verifier, sgx_quote, vectors.sgx_now)[0] == "refused"
    assert len(verifier.verdicts) == 0 and len(calls) == 3


# -- bounded, thread-safe ---------------------------------------------------------------


def test_the_cache_is_a_bounded_lru(testdata, sgx_quote, vectors):
    verifier = DcapVerifier(Fixed(load(testdata / "sgx_quote_collateral.json")),
                            VerdictCache(capacity=2))  # fmt: skip
    calls = counted(verifier)
    # Three accepted quotes of different platform bytes (PEM line breaks changed).
    a, b, c = sgx_quote, flip(sgx_quote, 1049), flip(sgx_quote, 1079)
    for raw in (a, b, a, c, a, b):
        assert outcome(verifier, raw, vectors.sgx_now)[0] == "accepted"
    assert len(verifier.verdicts) == 2
    assert len(calls) == 4  # a, b, c, then b again (evicted by c: a was used more recently)


def test_concurrent_verifications_share_the_cache_safely(testdata, sgx_quote, vectors):
    """Eight threads, one small shared cache, three collaterals, accepted and refused quotes."""
    shared = VerdictCache(capacity=2)
    genuine = Fixed(load(testdata / "sgx_quote_collateral.json"))
    copy = Fixed(load(testdata / "sgx_quote_collateral.json"))  # equal content
    changes = _other_collateral(testdata, sgx_quote)["another TCB info"]
    foreign = Fixed(load(testdata / "sgx_quote_collateral.json", **changes))
    quotes = [sgx_quote, flip(sgx_quote, 1049), flip(sgx_quote, 433),
              flip(sgx_quote, L.REPORT_DATA_OFFSET)]  # fmt: skip
    cases = [(source, raw) for source in (genuine, copy, foreign) for raw in quotes]
    expected = [outcome(uncached(source), raw, vectors.sgx_now) for source, raw in cases]
    verifiers = {id(s): DcapVerifier(s, shared) for s in (genuine, copy, foreign)}
    mismatches: list[tuple[int, Outcome]] = []
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for round_ in range(40):
                index = (offset + round_) % len(cases)
                source, raw = cases[index]
                if round_ % 7 == 0:
                    pck.forget_checked_quotes()
                got = outcome(verifiers[id(source)], raw, vectors.sgx_now)
                if got != expected[index]:
                    mismatches.append((index, got))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and not mismatches
    assert len(shared) <= 2 and shared.hits > 0
    assert sum(1 for kind, *_ in expected if kind == "accepted") == 4


def test_facts_of_one_object_are_computed_once(testdata):
    collateral = load(testdata / "sgx_quote_collateral.json")
    assert collateral_facts(collateral) is collateral_facts(collateral)
