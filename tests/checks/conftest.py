"""Recorded machine trees, materialised into a temporary root for each test.

Git cannot hold device nodes, ownership or the CPUID device, so each tree
under ``data/`` keeps them as text (``recorded-devices.txt``,
``recorded-cpuid.txt``) and :func:`materialise` recreates them: real
character devices with the recorded mode and group (mknod/chown need root,
which the test machine has; otherwise those tests skip), and sparse files
holding CPUID registers at ``leaf | subleaf << 32``, where the kernel's
``/dev/cpu/N/cpuid`` answers them.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
_CPUID_LINE = re.compile(
    r"0x(?P<leaf>[0-9a-f]+) 0x(?P<sub>[0-9a-f]+): eax=0x(?P<eax>[0-9a-f]+) "
    r"ebx=0x(?P<ebx>[0-9a-f]+) ecx=0x(?P<ecx>[0-9a-f]+) edx=0x(?P<edx>[0-9a-f]+)"
)


def _groups(root: Path) -> dict[str, int]:
    groups = {}
    for line in (root / "etc/group").read_text().splitlines():
        name, _, gid, *_ = line.split(":")
        groups[name] = int(gid)
    return groups


def _write_cpuid(recording: Path, root: Path) -> None:
    cpu = None
    for line in recording.read_text().splitlines():
        if line.startswith("CPU "):
            cpu = int(line.split()[1].rstrip(":"))
            continue
        match = _CPUID_LINE.search(line)
        if not match or cpu is None:
            continue
        regs = [int(match[r], 16) for r in ("eax", "ebx", "ecx", "edx")]
        target = root / f"dev/cpu/{cpu}/cpuid"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "r+b" if target.exists() else "wb") as handle:
            handle.seek(int(match["leaf"], 16) | (int(match["sub"], 16) << 32))
            handle.write(struct.pack("<4I", *regs))


def _make_devices(recording: Path, root: Path) -> None:
    groups = _groups(root) if (root / "etc/group").exists() else {}
    for line in recording.read_text().splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or fields[1] != "c":
            continue
        path, _, major, minor, mode, _owner, group = fields
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mknod(target, 0o600 | 0o020000, os.makedev(int(major), int(minor)))
            os.chown(target, 0, groups.get(group, 0))
        except PermissionError:
            pytest.skip("creating device nodes needs root (CAP_MKNOD)")
        os.chmod(target, int(mode, 8))


def materialise(name: str, into: Path) -> Path:
    source = DATA / name
    root = into / name
    shutil.copytree(source / "root", root, symlinks=True)
    if (source / "recorded-cpuid.txt").exists():
        _write_cpuid(source / "recorded-cpuid.txt", root)
    if (source / "recorded-devices.txt").exists():
        _make_devices(source / "recorded-devices.txt", root)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Callable[[str], Path]:
    """``tree("sgx-host-2numa")`` -> a fresh, writable root for that recording."""
    return lambda name: materialise(name, tmp_path)
