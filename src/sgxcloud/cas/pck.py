"""What a DCAP quote proves before any collateral is fetched: its PCK chain and signatures.

Collateral (TCB info, QE identity, CRLs) comes from the network, keyed by the
FMSPC and PCK CA named in the quote's PCK certificate.  That certificate is
whatever the sender put in the quote until it is checked, so asking a PCCS
for collateral first let anyone make the CAS fetch (and a LAZY PCCS ask
Intel) for any FMSPC they invent (red team, collateral DoS).  Everything that
needs no collateral is checked here first, with ``cryptography``:

- the PCK leaf chains, through the PCK Processor/Platform CA, to Intel's SGX
  Root CA pinned below (not the copy in the quote), every signature checked
  (validity in time is checked later, with the collateral, by dcap-qvl);
- the QE report is signed by the PCK leaf key;
- the QE report binds the attestation key (SHA-256 of key and QE auth data);
- the header and report body are signed by the attestation key.

Only then are FMSPC and CA type read, from the verified leaf.  Revocation,
QE identity and TCB level need collateral and stay dcap-qvl's job, which
repeats these checks on the same bytes the first time it sees a platform.

``check_quote`` also says what the verifier's verdict cache
(``sgxcloud.cas.evidence.dcap``) may key a verdict on: the digest of every
byte of the quote except the report body and the ISV signature (the two
things that differ between the quotes of one platform's enclaves), and the
validity window of the PCK chain.  Only a quote that passed these checks
gets a ``CheckedQuote``.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from sgxcloud.cas.errors import MalformedEvidenceError
from sgxcloud.sgx import quote_layout as L
from sgxcloud.sgx.quote import QuoteFormatError, read_header

INTEL_SGX_ROOT_CA_PEM = b"""-----BEGIN CERTIFICATE-----
MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG
A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0
aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT
AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7
1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB
uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ
MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50
ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV
Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI
KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg
AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=
-----END CERTIFICATE-----
"""
"""Intel SGX Provisioning Certification Root CA (the one dcap-qvl pins too)."""

_ROOT = x509.load_pem_x509_certificate(INTEL_SGX_ROOT_CA_PEM)
_SGX_EXTENSION = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_FMSPC_OID_DER = bytes.fromhex("060a2a864886f84d010d0104")  # 1.2.840.113741.1.13.1.4
_CA_TYPES = {"Intel SGX PCK Processor CA": "processor", "Intel SGX PCK Platform CA": "platform"}

_SIGNATURE = 64  # ECDSA P-256 r || s
_KEY = 64  # P-256 point x || y
_QE_REPORT = 384
_QE_REPORT_DATA = 320  # offset of REPORTDATA inside a report body
_TDX_BODY = 584  # TDX 1.0 report body in a v4 quote
_CERT_PCK_CHAIN = 5
# Intel's PCK chains (leaf, PCK CA, root in PEM) are ~3.7 KB; anything much
# larger is padding a sender chose, and costs parsing and memory.
MAX_PCK_CHAIN_BYTES = 16 * 1024
_CERT_QE_REPORT = 6


@dataclass(frozen=True)
class Platform:
    """Which collateral a quote needs, read from its *verified* PCK certificate."""

    tee: str  # "sgx" | "tdx"
    fmspc: str  # 12 upper-case hex digits
    ca: str  # "processor" | "platform"


@dataclass(frozen=True)
class CheckedQuote:
    """A quote whose PCK chain and signatures verified (``check_quote``).

    ``platform_digest`` is SHA-256 over every byte of the quote except the
    report body and the ISV enclave report signature: the header, the
    signature data length, the attestation key, the QE report, its signature,
    the QE authentication data, the certification data and anything after
    it.  Two checked quotes with equal digests differ at most in what the
    attestation key signed for each (the report body) and that signature.
    ``chain_window`` is [latest notBefore, earliest notAfter] over the PCK
    chain's certificates and the pinned root, in Unix seconds (inclusive, as
    X.509 validity is).
    """

    platform: Platform
    platform_digest: bytes
    chain_window: tuple[int, int]


@dataclass(frozen=True)
class _Chain:
    platform: Platform
    leaf_key: ec.EllipticCurvePublicKey
    not_before: int  # while this entry may be reused (always, today: see _verify_chain)
    not_after: int
    validity: tuple[int, int]  # the certificates' own validity, for verdict windows


_CHAINS: OrderedDict[bytes, _Chain] = OrderedDict()
_CHAINS_LOCK = threading.Lock()  # held for dictionary operations only, never across work
_CHAINS_MAX = 256  # distinct genuine PCK chains remembered (one per platform)
_QUOTES: OrderedDict[bytes, tuple[_Chain, CheckedQuote]] = OrderedDict()  # sha256(quote) ->
_QUOTES_MAX = 1024


class PckCheckError(ValueError):
    """A check failed; the text uses dcap-qvl's wording so the verifier's verdict
    table (``evidence.dcap``) gives the same code as dcap-qvl's own failure."""


def _invalid(message: str) -> PckCheckError:
    return PckCheckError(message)


class _Reader:
    """Bounds-checked reads; running off the end is a malformed quote."""

    def __init__(self, data: bytes, offset: int, end: int) -> None:
        self.data, self.offset, self.end = data, offset, end

    def take(self, size: int) -> bytes:
        if size < 0 or self.offset + size > self.end:
            raise MalformedEvidenceError("the quote's signature data is truncated")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])


def forget_checked_quotes() -> None:
    """Drop the quotes remembered as checked (chains stay): each next quote is checked again.

    Real enclaves never repeat a quote (each binds a fresh nonce); the
    benchmark, which re-verifies one real quote, calls this so that every
    attestation pays what a new quote of a known platform costs.
    """
    with _CHAINS_LOCK:
        _QUOTES.clear()


def forget_checked_chains() -> None:
    """Drop the PCK chains and quotes remembered as checked, as in a fresh process.

    For measuring what the first quote of a platform costs.
    """
    with _CHAINS_LOCK:
        _QUOTES.clear()
        _CHAINS.clear()


def precheck(quote: bytes, now: int) -> Platform:
    """Check what needs no collateral; return the platform its collateral is keyed by.

    ``check_quote(quote, now).platform``: see there.
    """
    return check_quote(quote, now).platform


def check_quote(quote: bytes, now: int) -> CheckedQuote:
    """Check what needs no collateral (module docstring); say what a verdict may rest on.

    Raises ``PckCheckError`` (a failed check) or ``MalformedEvidenceError``.
    Costs a chain verification and two ECDSA verifications (about 1 ms); the
    chain, the same for every quote of a platform, is remembered, so a new
    quote of a known platform costs the two ECDSA verifications (about
    0.2 ms).  A quote that passed is remembered by digest while its chain is
    valid (the same bytes give the same answer), so an enclave re-attesting
    with the same quote costs a hash.  Failures are not remembered: they cost
    the sender as much CPU as any other bad request, and no I/O.
    """
    digest = hashlib.sha256(quote).digest()
    with _CHAINS_LOCK:
        hit = _QUOTES.get(digest)
        if hit is not None:
            _QUOTES.move_to_end(digest)
    if hit is not None and hit[0].not_before <= now < hit[0].not_after:
        return hit[1]
    chain, checked = _precheck(quote, now)
    with _CHAINS_LOCK:
        _QUOTES[digest] = (chain, checked)
        while len(_QUOTES) > _QUOTES_MAX:
            _QUOTES.popitem(last=False)
    return checked


def _precheck(quote: bytes, now: int) -> tuple[_Chain, CheckedQuote]:
    try:
        header = read_header(quote)
    except QuoteFormatError as exc:
        raise MalformedEvidenceError(str(exc)) from exc
    body = _TDX_BODY if not header.is_sgx else L.REPORT_BODY_SIZE
    signed_end = L.HEADER_SIZE + body
    if header.version == 3 and not header.is_sgx:
        raise MalformedEvidenceError("a v3 quote is always SGX")
    reader = _Reader(quote, signed_end, len(quote))
    length = reader.u32()
    reader = _Reader(quote, reader.offset, min(reader.offset + length, len(quote)))
    isv_signature = reader.take(_SIGNATURE)
    attestation_key = reader.take(_KEY)
    if header.version == 4:  # QE report certification data (type 6) wraps the rest
        if reader.u16() != _CERT_QE_REPORT:
            raise MalformedEvidenceError("a v4 quote's certification data is not of type 6")
        size = reader.u32()
        reader = _Reader(quote, reader.offset, min(reader.offset + size, reader.end))
    qe_report = reader.take(_QE_REPORT)
    qe_signature = reader.take(_SIGNATURE)
    qe_auth = reader.take(reader.u16())
    if reader.u16() != _CERT_PCK_CHAIN:
        raise MalformedEvidenceError(
            "the quote carries no PCK certificate chain (certification data type 5)"
        )
    size = reader.u32()
    if size > MAX_PCK_CHAIN_BYTES:
        raise MalformedEvidenceError(
            f"the quote's PCK certificate chain is {size} bytes (at most {MAX_PCK_CHAIN_BYTES})"
        )
    chain = _verified_chain(reader.take(size), now, "sgx" if header.is_sgx else "tdx")
    _verify_p256(chain.leaf_key, qe_signature, qe_report, "signature is invalid for qe_report")
    binding = hashlib.sha256(attestation_key + qe_auth).digest()
    if qe_report[_QE_REPORT_DATA : _QE_REPORT_DATA + 32] != binding:
        raise _invalid("QE report hash mismatch (attestation key not bound to the QE)")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + attestation_key
        )
    except ValueError as exc:
        raise _invalid("ISV enclave report signature is invalid (key not on P-256)") from exc
    _verify_p256(key, isv_signature, quote[:signed_end], "ISV enclave report signature is invalid")
    return chain, CheckedQuote(chain.platform, platform_digest(quote), chain.validity)


def platform_digest(quote: bytes) -> bytes:
    """SHA-256 of every byte of ``quote`` but its report body and ISV signature.

    The report body is [48, end of body) and the ISV signature the 64 bytes
    after the 4-byte signature data length; both have fixed offsets and sizes
    for a given header (which is hashed), so the concatenation is unambiguous.
    """
    (tee_type,) = struct.unpack_from("<I", quote, L.TEE_TYPE_OFFSET)
    body = _TDX_BODY if tee_type == L.TEE_TYPE_TDX else L.REPORT_BODY_SIZE
    signed_end = L.HEADER_SIZE + body
    return hashlib.sha256(
        quote[: L.HEADER_SIZE]
        + quote[signed_end : signed_end + 4]
        + quote[signed_end + 4 + _SIGNATURE :]
    ).digest()


def _verify_p256(key: ec.EllipticCurvePublicKey, raw: bytes, data: bytes, message: str) -> None:
    signature = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise _invalid(message) from exc


def _verified_chain(pem: bytes, now: int, tee: str) -> _Chain:
    # A digest, not the text: the text is the sender's (red team attack-cas4:
    # 256 padded 1 MiB copies of a genuine chain pinned 256 MiB as keys).
    key = hashlib.sha256(tee.encode() + b"\0" + pem).digest()
    with _CHAINS_LOCK:
        hit = _CHAINS.get(key)
        if hit is not None:
            _CHAINS.move_to_end(key)
    if hit is not None and hit.not_before <= now < hit.not_after:
        return hit
    chain = _verify_chain(pem, now, tee)
    with _CHAINS_LOCK:
        _CHAINS[key] = chain
        while len(_CHAINS) > _CHAINS_MAX:
            _CHAINS.popitem(last=False)
    return chain


def _verify_chain(pem: bytes, now: int, tee: str) -> _Chain:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise _invalid("PCK certificates in the quote are unreadable") from exc
    leaf, intermediates = certificates[0], [c for c in certificates[1:] if c != _ROOT]
    # Checked here: who signed what.  Whether the certificates are valid at
    # ``now`` is checked with the collateral (dcap-qvl), so that a quote at a
    # time outside its windows keeps its collateral verdicts; the signatures
    # are checked at a time inside the certificates' own validity.
    starts = max(int(c.not_valid_before_utc.timestamp()) for c in [*certificates, _ROOT])
    ends = min(int(c.not_valid_after_utc.timestamp()) for c in [*certificates, _ROOT])
    at = datetime.fromtimestamp(min(max(now, starts), max(ends, starts)), UTC)
    verifier = (
        PolicyBuilder()
        .store(Store([_ROOT]))  # the pinned root, never the quote's copy
        .time(at)
        .max_chain_depth(2)
        # Intel's PCK leaf is no web client certificate (no SAN, no EKU): the
        # leaf's extensions are its own; CA certificates keep the strict profile.
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
        )
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise _invalid("Invalid PCK certificate chain: not to Intel's SGX Root CA") from exc
    path = verified.chain  # leaf, PCK CA, root
    if len(path) != 3:
        raise _invalid("PCK certificate chain is not leaf, PCK CA, root")
    names = path[1].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    ca = _CA_TYPES.get(str(names[0].value) if names else "")
    leaf_key = leaf.public_key()
    if ca is None or not (
        isinstance(leaf_key, ec.EllipticCurvePublicKey) and leaf_key.curve.name == "secp256r1"
    ):
        raise _invalid("PCK certificate is not issued by a PCK CA with a P-256 key")
    return _Chain(Platform(tee, _fmspc(leaf), ca), leaf_key, 0, 2**63, (starts, ends))


def _fmspc(leaf: x509.Certificate) -> str:
    """FMSPC from the SGX extension of a verified PCK leaf (SEQUENCE of OID/value pairs)."""
    try:
        value = leaf.extensions.get_extension_for_oid(_SGX_EXTENSION).value
        der = value.value  # type: ignore[attr-defined]  # UnrecognizedExtension
        tag, items, _ = _tlv(der, 0)
        offset = 0
        while tag == 0x30 and offset < len(items):
            _, pair, offset = _tlv(items, offset)
            oid_tag, _oid, rest = _tlv(pair, 0)
            if oid_tag == 0x06 and pair[:rest] == _FMSPC_OID_DER:
                value_tag, fmspc, _ = _tlv(pair, rest)
                if value_tag == 0x04 and len(fmspc) == 6:
                    return fmspc.hex().upper()
    except (x509.ExtensionNotFound, IndexError, ValueError):
        pass
    raise _invalid("PCK certificate names no FMSPC")


def _tlv(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, contents, next offset) of the DER element at ``offset`` (Intel-signed input)."""
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[offset : offset + count])
        offset += count
    if offset + length > len(data):
        raise ValueError("DER element runs past its container")
    return tag, data[offset : offset + length], offset + length
