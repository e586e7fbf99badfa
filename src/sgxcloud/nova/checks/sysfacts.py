"""Parsers for the kernel and libvirt texts the check tools read.

Pure functions over text, so they are tested on recorded outputs and shared by
the host and guest checks.  Each raises :class:`ValueError` with a short
reason on input it cannot understand.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from sgxcloud.nova import compat
from sgxcloud.sgx.epc import KIB

# libvirt's unit names (docs: formatdomain.html#memory-allocation), as multipliers of bytes.
_UNITS = {
    "b": 1, "bytes": 1,
    "k": KIB, "kib": KIB, "kb": 1000,
    "m": KIB**2, "mib": KIB**2, "mb": 1000**2,
    "g": KIB**3, "gib": KIB**3, "gb": 1000**3,
    "t": KIB**4, "tib": KIB**4, "tb": 1000**4,
}  # fmt: skip


def cpu_flags(cpuinfo: str) -> list[set[str]]:
    """The ``flags`` of every processor in ``/proc/cpuinfo``, in order."""
    flags = []
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            flags.append(set(value.split()))
    if not flags:
        raise ValueError("no 'flags' line")
    return flags


def kernel_version(osrelease: str) -> tuple[int, int, int]:
    """``6.1.0-13-amd64`` -> (6, 1, 0); the patch level defaults to 0."""
    match = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", osrelease)
    if not match:
        raise ValueError(f"not a kernel release: {osrelease.strip()[:40]!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def size_in_bytes(value: str, unit: str | None) -> int:
    """A libvirt size with its ``unit`` attribute (KiB when absent) in bytes."""
    try:
        multiplier = _UNITS[(unit or "KiB").lower()]
    except KeyError:
        raise ValueError(f"unknown unit {unit!r}") from None
    try:
        number = int(value.strip())
    except ValueError:
        raise ValueError(f"not an integer size: {value.strip()[:20]!r}") from None
    return number * multiplier


@dataclass(frozen=True)
class Versions:
    libvirt: tuple[int, ...] | None
    qemu: tuple[int, ...] | None


def parse_virsh_version(text: str) -> Versions:
    """``virsh version`` output: "Using library: libvirt X" and "Running hypervisor: QEMU Y"."""
    libvirt = re.search(r"Using library:\s*libvirt\s+([\d.]+)", text)
    qemu = re.search(r"Running hypervisor:\s*QEMU\s+([\d.]+)", text)
    if not libvirt and not qemu:
        raise ValueError("no 'Using library' or 'Running hypervisor' line")
    return Versions(
        _version(libvirt.group(1)) if libvirt else None, _version(qemu.group(1)) if qemu else None
    )


def parse_version_line(text: str) -> tuple[int, ...]:
    """First dotted version number in ``--version`` output (virsh, QEMU)."""
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)", text)
    if not match:
        raise ValueError(f"no version number in {text.strip()[:40]!r}")
    return _version(match.group(1))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.strip(".").split(".") if part.isdigit())


def version_text(version: tuple[int, ...] | None) -> str:
    return compat.dotted(version) if version else "unknown"


# POSIX ACL xattr layout (linux/posix_acl_xattr.h): u32 version 2, then
# entries of (u16 tag, u16 perm, u32 id), little-endian.
_ACL_VERSION = 2
_ACL_USER = 0x02
_ACL_GROUP = 0x08
_ACL_MASK = 0x10


@dataclass(frozen=True)
class AclGrants:
    users: dict[int, int]  # uid -> rwx bits
    groups: dict[int, int]  # gid -> rwx bits
    mask: int | None


def parse_posix_acl(blob: bytes) -> AclGrants:
    if len(blob) < 4 or (len(blob) - 4) % 8:
        raise ValueError("malformed POSIX ACL")
    (version,) = struct.unpack_from("<I", blob)
    if version != _ACL_VERSION:
        raise ValueError(f"POSIX ACL version {version}")
    users: dict[int, int] = {}
    groups: dict[int, int] = {}
    mask = None
    for offset in range(4, len(blob), 8):
        tag, perm, ident = struct.unpack_from("<HHI", blob, offset)
        if tag == _ACL_USER:
            users[ident] = perm
        elif tag == _ACL_GROUP:
            groups[ident] = perm
        elif tag == _ACL_MASK:
            mask = perm
    return AclGrants(users, groups, mask)
