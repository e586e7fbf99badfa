"""Enclave page cache (EPC) sizes and the units they come in.

The kernel, libvirt, CPUID and the isgx driver each report EPC in a different
unit (bytes, KiB, 4 KiB pages); Placement and flavors count whole MiB.  Every
conversion goes through here so that a unit mistake can only be made once.
"""

from __future__ import annotations

PAGE_SIZE = 4096
"""Bytes in one EPC page (SGX pages are always 4 KiB)."""

KIB = 1024
MIB = 1024 * 1024

PAGES_PER_MIB = MIB // PAGE_SIZE  # 256


def bytes_to_mib(size_bytes: int) -> int:
    """Whole MiB in ``size_bytes``, rounding down (never promise EPC we lack)."""
    return size_bytes // MIB


def kib_to_mib(size_kib: int) -> int:
    """Whole MiB in ``size_kib``, rounding down."""
    return size_kib // KIB


def pages_to_mib(pages: int) -> float:
    """MiB covered by ``pages`` 4 KiB EPC pages (2048 pages = 8 MiB)."""
    return pages * PAGE_SIZE / MIB


def mib_to_kib(size_mib: int) -> int:
    return size_mib * KIB
