"""SGX facts from CPUID, read through the kernel's ``/dev/cpu/N/cpuid`` files.

The ``cpuid`` driver (``modprobe cpuid``; root only) answers a 16-byte
``pread`` at offset ``leaf | subleaf << 32`` with EAX, EBX, ECX, EDX as
little-endian 32-bit words.  Leaf 0x12 says what is enabled (sub-leaf 0:
SGX1/SGX2) and where the EPC is (sub-leaves 2.. : one section each, until a
section of type 0); it reads as zeros when firmware leaves SGX disabled.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from sgxcloud.nova.checks.tree import HostTree, MissingFile, TreeReadError

SGX_LEAF = 0x12
_EPC_FIRST_SUBLEAF = 2
_MAX_EPC_SECTIONS = 8  # Linux's SGX_MAX_EPC_SECTIONS
_SECTION_TYPE_VALID = 1


@dataclass(frozen=True)
class Registers:
    eax: int
    ebx: int
    ecx: int
    edx: int


@dataclass(frozen=True)
class EpcSection:
    base: int
    size_bytes: int


@dataclass(frozen=True)
class SgxCpuid:
    """What CPUID says about SGX on one logical CPU."""

    sgx1: bool  # leaf 0x12.0 EAX[0]: zero when the CPU lacks SGX or firmware disabled it
    sgx2: bool  # leaf 0x12.0 EAX[1]
    sections: tuple[EpcSection, ...]

    @property
    def epc_bytes(self) -> int:
        return sum(s.size_bytes for s in self.sections)


class CpuidReader:
    """Reads CPUID through ``/dev/cpu/<cpu>/cpuid`` under a :class:`HostTree`."""

    def __init__(self, tree: HostTree, cpu: int = 0) -> None:
        self.machine_path = f"/dev/cpu/{cpu}/cpuid"
        self._file = tree.path(self.machine_path)

    def read(self, leaf: int, subleaf: int = 0) -> Registers:
        """Raise :class:`TreeReadError` when the device is absent or not ours to read."""
        try:
            fd = os.open(self._file, os.O_RDONLY)
        except FileNotFoundError:
            raise MissingFile(self.machine_path, "does not exist (modprobe cpuid)") from None
        except PermissionError:
            raise TreeReadError(self.machine_path, "permission denied (needs root)") from None
        except OSError as exc:
            raise TreeReadError(self.machine_path, exc.strerror or type(exc).__name__) from None
        try:
            data = os.pread(fd, 16, leaf | (subleaf << 32))
        except IsADirectoryError:
            raise TreeReadError(self.machine_path, "is a directory, expected a device") from None
        except OSError as exc:
            raise TreeReadError(self.machine_path, exc.strerror or type(exc).__name__) from None
        finally:
            os.close(fd)
        if len(data) != 16:
            raise TreeReadError(
                self.machine_path, f"short read for leaf {leaf:#x}.{subleaf} ({len(data)} bytes)"
            )
        return Registers(*struct.unpack("<4I", data))

    def sgx(self) -> SgxCpuid:
        caps = self.read(SGX_LEAF, 0)
        if not caps.eax & 1:
            return SgxCpuid(sgx1=False, sgx2=False, sections=())
        sections = []
        for index in range(_MAX_EPC_SECTIONS):
            regs = self.read(SGX_LEAF, _EPC_FIRST_SUBLEAF + index)
            if regs.eax & 0xF != _SECTION_TYPE_VALID:
                break
            base = _section_value(regs.eax, regs.ebx)
            sections.append(EpcSection(base, _section_value(regs.ecx, regs.edx)))
        return SgxCpuid(sgx1=True, sgx2=bool(caps.eax & 2), sections=tuple(sections))


def _section_value(low: int, high: int) -> int:
    """Bits 31:12 of ``low`` and 19:0 of ``high`` form a 52-bit address or size."""
    return (low & 0xFFFFF000) | ((high & 0x000FFFFF) << 32)
