"""Parse-only reader of an SGX DCAP quote's header and ISV enclave report body.

This reads what a quote *claims*; it proves nothing.  Cryptographic
verification is dcap-qvl's job (``sgxcloud.cas.evidence``).  The reader exists
for two things: showing what an unverifiable quote says in error reports, and
taking the identity out of bytes dcap-qvl has already verified.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sgxcloud.errors import InputError
from sgxcloud.sgx import quote_layout as L
from sgxcloud.sgx.identity import DEBUG_ATTRIBUTE_BIT, EnclaveIdentity

SUPPORTED_VERSIONS = (3, 4)
TEE_NAMES = {L.TEE_TYPE_SGX: "SGX", L.TEE_TYPE_TDX: "TDX"}


class QuoteFormatError(InputError):
    """The bytes are not an SGX/TDX DCAP quote this reader understands."""


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int

    @property
    def tee(self) -> str:
        return TEE_NAMES.get(self.tee_type, f"unknown (0x{self.tee_type:x})")

    @property
    def is_sgx(self) -> bool:
        return self.tee_type == L.TEE_TYPE_SGX


@dataclass(frozen=True)
class ParsedQuote:
    """What an SGX quote says about its enclave, unverified."""

    header: QuoteHeader
    identity: EnclaveIdentity
    report_data: bytes


def read_header(raw: bytes) -> QuoteHeader:
    """Header fields of a v3/v4 quote; rejects anything else with one line."""
    if len(raw) < L.HEADER_SIZE:
        raise QuoteFormatError(f"not a DCAP quote: {len(raw)} bytes, a header alone is 48")
    version, key_type, tee_type = struct.unpack_from("<HHI", raw, L.VERSION_OFFSET)
    if version not in SUPPORTED_VERSIONS:
        raise QuoteFormatError(f"not a DCAP quote v3/v4: version field is {version}")
    if tee_type not in TEE_NAMES:
        raise QuoteFormatError(f"not a DCAP quote: unknown TEE type 0x{tee_type:x}")
    return QuoteHeader(version, key_type, tee_type)


def parse_sgx_quote(raw: bytes) -> ParsedQuote:
    """Read the enclave identity and REPORTDATA from an SGX quote (no checks)."""
    header = read_header(raw)
    if not header.is_sgx:
        raise QuoteFormatError(f"a {header.tee} quote attests a trust domain, not an SGX enclave")
    if len(raw) < L.SIGNATURE_DATA_OFFSET:
        raise QuoteFormatError(
            f"truncated SGX quote: {len(raw)} bytes, the report body ends at "
            f"{L.SIGNATURE_DATA_OFFSET}"
        )
    attributes = raw[L.ATTRIBUTES_OFFSET : L.ATTRIBUTES_OFFSET + 16]
    isvprodid, isvsvn = struct.unpack_from("<HH", raw, L.ISVPRODID_OFFSET)
    identity = EnclaveIdentity(
        mrenclave=raw[L.MRENCLAVE_OFFSET : L.MRENCLAVE_OFFSET + 32].hex(),
        mrsigner=raw[L.MRSIGNER_OFFSET : L.MRSIGNER_OFFSET + 32].hex(),
        isvprodid=isvprodid,
        isvsvn=isvsvn,
        debug=bool(attributes[0] & DEBUG_ATTRIBUTE_BIT),
        attributes=attributes.hex(),
    )
    report_data = raw[L.REPORT_DATA_OFFSET : L.REPORT_DATA_OFFSET + L.REPORT_DATA_SIZE]
    return ParsedQuote(header, identity, report_data)
