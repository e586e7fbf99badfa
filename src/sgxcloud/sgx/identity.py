"""What an enclave is: the measured identity carried in every SGX report.

Quote parsers, the attestation service's policies and the clean room's
collaboration definitions all speak of enclaves through this one type.
"""

from __future__ import annotations

from dataclasses import dataclass

DEBUG_ATTRIBUTE_BIT = 0x02
"""Bit 1 of the first ATTRIBUTES byte: the enclave was launched in debug mode."""


@dataclass(frozen=True)
class EnclaveIdentity:
    """Measurements of one enclave, as lower-case hex strings and integers."""

    mrenclave: str
    mrsigner: str
    isvprodid: int
    isvsvn: int
    debug: bool
    attributes: str = ""

    def short(self) -> str:
        return f"MRENCLAVE {self.mrenclave[:16]}… ISVPRODID {self.isvprodid} ISVSVN {self.isvsvn}"
