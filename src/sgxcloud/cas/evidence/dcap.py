"""DCAP ECDSA quote verification with dcap-qvl (Intel's signatures, CRLs, TCB).

dcap-qvl does the cryptography: the quote's signature by the attestation key,
the QE report's signature by the PCK, the PCK chain to Intel's root CA, CRLs,
TCB info and QE identity.  This module adds what a service needs around it:
the checks that need no collateral *before* collateral is asked for
(``sgxcloud.cas.pck``), collateral from a source, a strict validity window (``nextUpdate`` is
exclusive), a verdict vocabulary instead of library messages, the enclave
identity from the verified bytes, and a verdict cache.

TDX quotes verify cryptographically but are refused with ``not-sgx-enclave``:
they attest a trust domain, and CAS policies pin SGX enclave identities.

What dcap-qvl checks, and which checks depend on the quote itself
------------------------------------------------------------------

``dcap_qvl.verify(quote, collateral, now)`` (0.7.0, ``src/verify.rs``
``verify_impl``; Intel's root pinned, debug enclaves and service TDs refused)
makes these checks, in this order.  "Platform" means bytes that are the same
in every quote of one platform's enclaves (header, attestation key, QE
report and its signature, QE authentication data, certification data);
"per quote" means the report body or the ISV signature, which differ in
every quote (REPORTDATA binds a fresh nonce):

 1. root CA CRL parsed and its signature checked with the pinned root key;
    PCK CRL parsed; the root CA not revoked .............. collateral, now
 2. quote decoded: header, report body (SGX: 384 bytes of fixed layout, its
    contents not validated), signature data (u32 length, ISV signature,
    attestation key, QE report, QE report signature, QE auth data,
    certification data) .............. platform (structure: header, length)
 3. header: version 3, 4 or 5; QE vendor id is Intel's; TEE type SGX or TDX;
    SGX only as v3, TDX only as v4/v5; attestation key type ECDSA-256-P256
    ......................................................... platform (header)
 4. TCB info: JSON, issueDate <= now <= nextUpdate, issuer chain to the root
    (each certificate's validity at now, revocation by the CRLs, CRL
    nextUpdate > now), signature over the signed JSON ....... collateral, now
 5. QE identity: the same (its chain re-verified unless it is the TCB info's);
    its id and version fit the TEE type ("QE" v2 for SGX)
    ............................................... collateral, now, header
 6. PCK chain (the collateral's ``pck_certificate_chain`` when it has one,
    else the quote's type-5 certification data): at most four intermediates,
    to the root, validity at now, revocation; the PCK extension read (FMSPC,
    CPUSVN, PCESVN, PPID...) ........ platform (certification data), collateral, now
 7. QE report signed by the PCK leaf ................... platform (QE report)
 8. QE report data = SHA-256(attestation key || QE auth data) ....... platform
 9. QE identity policy: MRSIGNER, QE not in debug mode, ISVPRODID,
    MISCSELECT and ATTRIBUTES under their masks, QE ISVSVN -> QE TCB level
    ....................................................... platform, collateral
10. ISV enclave report signature: the attestation key over header + report
    body ................................................... **per quote**
11. platform TCB level: FMSPC of the PCK leaf = TCB info's; TCB info id and
    version fit the TEE type; the first level whose PCESVN and CPUSVN
    components (from the PCK certificate, *not* the report body's CPUSVN)
    the platform meets; a status Intel's QVL accepts.  TDX also: TEE_TCB_SVN,
    the TDX module identity (MRSIGNER_SEAM, SEAM attributes) and a TD 1.5's
    current TCB (TEE_TCB_SVN2), all from the report body
    ........................ platform, collateral (SGX); **per quote** (TDX)
12. platform and QE statuses merged; Revoked refused ........... from 9, 11
13. report attributes: SGX: the debug bit of the report body's ATTRIBUTES;
    TDX: TD attributes (debug, profiling, reserved, migratable, SERVTD_EXT,
    SEPT_VE_DISABLE) and MR_SERVICE_TD ...................... **per quote**

The verdict (TCB status, advisory ids, and whether the quote passes) thus
depends on the quote's report body and ISV signature only through 10, 13
and, for TDX, 11; on ``now`` only through checks of the form
``start <= now <= end`` (1, 4, 5, 6: JSON dates, CRL nextUpdate,
certificate validity; rustls-webpki 0.103, of which dcap-qvl uses a fork,
compares no CRL entry's revocation date with ``now``).

The verdict cache
-----------------

After ``pck.check_quote`` has verified this quote's own signatures
(including 10, with the attestation key that its QE report binds), a verdict
dcap-qvl gave is reused -- dcap-qvl is not called -- for a quote whose every
byte outside the report body and the ISV signature is identical
(``CheckedQuote.platform_digest``), with collateral of identical content
(``collateral_facts(...).fingerprint``: dcap-qvl's own serialisation of every
field), while ``now`` lies in every window the verdict depended on: TCB info
and QE identity [issueDate, nextUpdate), both CRLs [thisUpdate, nextUpdate),
and every certificate of the collateral's chains and the PCK chain (with the
pinned root) [notBefore, notAfter) -- each no wider than dcap-qvl's own
check -- and for at most ``VerdictCache.max_age`` seconds (300) after
dcap-qvl gave it.  Only SGX v3 quotes whose debug bit is clear are served from
the cache: that is where 10 (redone by ``check_quote``) is the only
per-quote check; TDX quotes and debug enclaves always go to dcap-qvl.
Failures are never cached.  Identity and REPORTDATA are read from the quote's
own verified bytes every time.  A new quote of a known platform thus costs
``check_quote``'s two ECDSA verifications and two hashes instead of
dcap-qvl's full run (chains, CRLs, collateral signatures, TCB matching).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sgxcloud.cas.collateral import (
    CollateralSource,
    ValidityWindow,
    collateral_facts,
    collateral_window,
)
from sgxcloud.cas.errors import EvidenceError, MalformedEvidenceError
from sgxcloud.cas.evidence.model import Evidence, VerifiedEvidence
from sgxcloud.cas.pck import CheckedQuote, PckCheckError, check_quote
from sgxcloud.sgx import quote_layout as L
from sgxcloud.sgx.identity import DEBUG_ATTRIBUTE_BIT
from sgxcloud.sgx.quote import QuoteFormatError, QuoteHeader, parse_sgx_quote, read_header

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
    # Before "qe identity" and "tcb": these name the collateral piece whose
    # own signature failed, not a platform that does not match it.
    (
        "signature is invalid for tcb_info",
        "collateral-invalid",
        "collateral invalid: the TCB info is not signed by Intel (altered?)",
    ),
    (
        "signature is invalid for qe_identity",
        "collateral-invalid",
        "collateral invalid: the QE identity is not signed by Intel (altered?)",
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


@dataclass(frozen=True)
class _Verdict:
    """What dcap-qvl said of an accepted quote that does not come from its report body."""

    status: str
    advisory_ids: tuple[str, ...]


_ReuseKey = tuple[bytes, bytes]  # (CheckedQuote.platform_digest, collateral fingerprint)


class VerdictCache:
    """dcap-qvl's accepted verdicts, reused as the module docstring says; thread-safe LRU.

    ``capacity`` entries (one per platform and collateral in use: few), each
    served while ``now`` is in its window and for at most ``max_age``
    seconds of ``clock`` after it was stored.  ``capacity=0`` reuses nothing.
    The lock is held for dictionary operations only, never across work.
    """

    def __init__(
        self,
        capacity: int = 256,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self._clock = clock
        self._entries: OrderedDict[_ReuseKey, tuple[_Verdict, ValidityWindow, float]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: _ReuseKey, now: int) -> _Verdict | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._clock() >= entry[2]:
                del self._entries[key]
                entry = None
            if entry is None or not entry[1].contains(now):
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: _ReuseKey, verdict: _Verdict, window: ValidityWindow, now: int) -> None:
        if self.capacity <= 0 or not window.contains(now):
            return
        expires = self._clock() + self.max_age
        with self._lock:
            self._entries[key] = (verdict, window, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def reuse_key(
    raw: bytes, header: QuoteHeader, checked: CheckedQuote, collateral: Any
) -> _ReuseKey | None:
    """The key a verdict about ``raw`` may be reused under, or ``None`` if it may not be.

    Only where ``check_quote`` re-made the one check dcap-qvl makes on the
    report body (its signature, check 10): SGX v3 quotes with the debug bit
    clear (check 13 would refuse a debug enclave).  TDX quotes take their TCB
    level from the report body (check 11); they, and anything else, always
    go to dcap-qvl.
    """
    if not (header.is_sgx and header.version == 3):
        return None
    if raw[L.ATTRIBUTES_OFFSET] & DEBUG_ATTRIBUTE_BIT:
        return None
    return (checked.platform_digest, collateral_facts(collateral).fingerprint)


def window_sources(checked: CheckedQuote, collateral: Any) -> list[tuple[str, ValidityWindow]]:
    """Every validity window a verdict about ``checked`` and ``collateral`` depended on.

    Half-open ``[start, end)``, each no wider than dcap-qvl's own check (which
    accepts ``now == end`` for JSON dates and certificates).  Empty when a
    collateral chain cannot be read here: then nothing is reused.
    """
    certificates = collateral_facts(collateral).certificate_windows
    if certificates is None:
        return []
    start, end = checked.chain_window
    return [
        ("TCB info, QE identity, PCK CRL, root CA CRL", collateral_window(collateral)),
        ("PCK certificate chain and pinned root", ValidityWindow(start, end)),
        *certificates,
    ]


def _intersection(sources: list[tuple[str, ValidityWindow]]) -> ValidityWindow:
    return functools.reduce(ValidityWindow.intersect, (window for _, window in sources))


class DcapVerifier:
    """Verifies DCAP quotes (SGX v3/v4) against collateral from ``collateral_source``.

    ``verdicts`` is where accepted verdicts are reused (module docstring); by
    default a cache of this verifier's own, ``VerdictCache(capacity=0)`` for none.
    """

    def __init__(
        self, collateral_source: CollateralSource, verdicts: VerdictCache | None = None
    ) -> None:
        self.collateral_source = collateral_source
        self.verdicts = VerdictCache() if verdicts is None else verdicts
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
            checked = check_quote(raw, now)
        except PckCheckError as exc:
            raise _verdict(exc) from exc
        collateral = self.collateral_source.get(raw, now)
        self._check_window(collateral, now)
        verdict = self._judge(raw, header, checked, collateral, now)
        if not header.is_sgx:
            raise EvidenceError(
                f"valid {header.tee} quote (TCB {verdict.status}), but it attests a trust "
                "domain, not an SGX enclave; CAS policies pin SGX enclave identities",
                code="not-sgx-enclave",
            )
        parsed = parse_sgx_quote(raw)  # from this quote's own (verified) bytes, every time
        return VerifiedEvidence(
            identity=parsed.identity,
            report_data=parsed.report_data,
            tcb_status=verdict.status,
            advisory_ids=verdict.advisory_ids,
            simulated=False,
            verified_at=now,
            quote_version=header.version,
            fmspc=_fmspc(collateral),
        )

    def _judge(
        self, raw: bytes, header: QuoteHeader, checked: CheckedQuote, collateral: Any, now: int
    ) -> _Verdict:
        """dcap-qvl's verdict on ``raw``: reused when the module docstring allows, else asked."""
        key = reuse_key(raw, header, checked, collateral)
        if key is not None:
            reused = self.verdicts.get(key, now)
            if reused is not None:
                return reused
        try:
            report = self._verify(raw, collateral, now)
        except (ValueError, RuntimeError) as exc:
            raise _verdict(exc) from exc
        verdict = _Verdict(str(report.status), tuple(report.advisory_ids))
        if key is not None:
            sources = window_sources(checked, collateral)
            if sources:
                self.verdicts.put(key, verdict, _intersection(sources), now)
        return verdict

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
