"""DCAP ECDSA quote verification with dcap-qvl (Intel's signatures, CRLs, TCB).

dcap-qvl does the cryptography: the quote's signature by the attestation key,
the QE report's signature by the PCK, the PCK chain to Intel's root CA, CRLs,
TCB info and QE identity.  This module adds what a service needs around it:
the checks that need no collateral *before* collateral is asked for
(``sgxcloud.cas.pck``), collateral from a source, a strict validity window (``nextUpdate`` is
exclusive), a verdict vocabulary instead of library messages, and the enclave
identity from the verified bytes.

TDX quotes verify cryptographically but are refused with ``not-sgx-enclave``:
they attest a trust domain, and CAS policies pin SGX enclave identities.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sgxcloud.cas.collateral import CollateralSource, collateral_window
from sgxcloud.cas.errors import EvidenceError, MalformedEvidenceError
from sgxcloud.cas.evidence.model import Evidence, VerifiedEvidence
from sgxcloud.cas.pck import PckCheckError, precheck
from sgxcloud.sgx.quote import QuoteFormatError, parse_sgx_quote, read_header

# dcap-qvl message fragment -> (our code, our verdict).  First match wins.
_VERDICTS: tuple[tuple[str, str, str], ...] = (
    (
        "report signature is invalid",
        "signature-invalid",
        "quote signature invalid: the enclave report was altered or not signed by this "
        "platform's attestation key",
    ),
    (
        "signature is invalid for qe_report",
        "signature-invalid",
        "quote signature invalid: the quoting enclave's report is not signed by the PCK",
    ),
    (
        "qe report hash mismatch",
        "signature-invalid",
        "quote signature invalid: the attestation key is not bound to the quoting enclave",
    ),
    ("unknown qe vendor", "qe-untrusted", "the quote was not made by Intel's quoting enclave"),
    ("qe identity", "qe-untrusted", "the quoting enclave does not match Intel's QE identity"),
    ("revoked", "revoked", "a certificate in the quote's chain has been revoked"),
    ("crlexpired", "collateral-expired", "collateral expired: a CRL is past its nextUpdate"),
    ("expired", "collateral-expired", "collateral expired: renew TCB info/QE identity"),
    ("in the future", "collateral-not-yet-valid", "collateral is not yet valid at this time"),
    (
        "certificate chain",
        "certificate-invalid",
        "the quote's PCK certificate chain does not lead to Intel's root CA",
    ),
    ("pck cert", "certificate-invalid", "the quote's PCK certificate is unusable"),
    ("pck certificate", "certificate-invalid", "the quote's PCK certificate is unusable"),
    ("fmspc", "collateral-mismatch", "the collateral is for another platform (FMSPC)"),
    ("tcb", "collateral-mismatch", "no TCB level of the collateral matches this platform"),
    ("decode quote", "malformed", "the quote's structure is damaged"),
    ("unsupported", "malformed", "the quote uses an unsupported format"),
)


def _verdict(exc: Exception) -> EvidenceError:
    """Translate a dcap-qvl failure into one of our verdicts; keep its text as detail."""
    text = str(exc)
    detail = text.removeprefix("Verification failed: ").splitlines()[0].strip() if text else ""
    lowered = text.lower()
    for fragment, code, message in _VERDICTS:
        if fragment in lowered:
            if code == "malformed":
                return MalformedEvidenceError(message, detail=detail)
            return EvidenceError(message, code=code, detail=detail)
    return EvidenceError("quote verification failed", code="invalid", detail=detail)


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DcapVerifier:
    """Verifies DCAP quotes (SGX v3/v4) against collateral from ``collateral_source``."""

    def __init__(self, collateral_source: CollateralSource) -> None:
        self.collateral_source = collateral_source
        import dcap_qvl  # imported here so code that never verifies quotes never loads it

        self._verify = dcap_qvl.verify

    def __repr__(self) -> str:
        return f"DcapVerifier({self.collateral_source!r})"

    def verify(self, evidence: Evidence, now: int) -> VerifiedEvidence:
        if evidence.format != "dcap":
            raise EvidenceError("this verifier only reads DCAP quotes", code="wrong-format")
        raw = evidence.raw
        try:
            header = read_header(raw)
        except QuoteFormatError as exc:
            raise MalformedEvidenceError(str(exc)) from exc
        # What needs no collateral first (PCK chain to the pinned Intel root,
        # QE report and quote signatures): collateral is fetched over the
        # network, keyed by the FMSPC in the PCK certificate, and an unchecked
        # certificate let anyone choose that key (red team: collateral DoS).
        try:
            precheck(raw, now)
        except PckCheckError as exc:
            raise _verdict(exc) from exc
        collateral = self.collateral_source.get(raw, now)
        self._check_window(collateral, now)
        try:
            report = self._verify(raw, collateral, now)
        except (ValueError, RuntimeError) as exc:
            raise _verdict(exc) from exc
        if not header.is_sgx:
            raise EvidenceError(
                f"valid {header.tee} quote (TCB {report.status}), but it attests a trust "
                "domain, not an SGX enclave; CAS policies pin SGX enclave identities",
                code="not-sgx-enclave",
            )
        parsed = parse_sgx_quote(raw)
        return VerifiedEvidence(
            identity=parsed.identity,
            report_data=parsed.report_data,
            tcb_status=report.status,
            advisory_ids=tuple(report.advisory_ids),
            simulated=False,
            verified_at=now,
            quote_version=header.version,
            fmspc=_fmspc(collateral),
        )

    @staticmethod
    def _check_window(collateral: Any, now: int) -> None:
        """Refuse collateral outside [issue, nextUpdate) before asking dcap-qvl.

        dcap-qvl still accepts at exactly ``nextUpdate``; the PCS treats that
        instant as the moment new collateral takes over, so we do too.
        """
        window = collateral_window(collateral)
        if now < window.not_before:
            raise EvidenceError(
                f"collateral is not yet valid at {_utc(now)} (valid from "
                f"{_utc(window.not_before)})",
                code="collateral-not-yet-valid",
            )
        if now >= window.not_after:
            raise EvidenceError(
                f"collateral expired at {_utc(window.not_after)} (checked at {_utc(now)})",
                code="collateral-expired",
            )


_FMSPC_CACHE: dict[str, str] = {}


def _fmspc(collateral: Any) -> str:
    """FMSPC named by the (already verified) TCB info, for reports and audit."""
    text = collateral.tcb_info
    cached = _FMSPC_CACHE.get(text)
    if cached is None:
        try:
            cached = str(json.loads(text).get("fmspc", "")).upper()
        except ValueError:
            cached = ""
        if len(_FMSPC_CACHE) > 64:
            _FMSPC_CACHE.clear()
        _FMSPC_CACHE[text] = cached
    return cached
