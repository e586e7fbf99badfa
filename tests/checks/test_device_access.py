"""POSIX access order for /dev/sgx_vepc: owner, named user, groups, other."""

from __future__ import annotations

import os
import struct

import pytest

from sgxcloud.nova.checks.host import _can_open_rw
from sgxcloud.nova.checks.tree import HostTree

QEMU_UID, KVM_GID, SGX_GID = 64055, 108, 109


@pytest.fixture
def device(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "dev").mkdir()
    (tmp_path / "etc/passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\nlibvirt-qemu:x:{QEMU_UID}:{KVM_GID}::/:/bin/false\n"
    )
    (tmp_path / "etc/group").write_text(
        f"root:x:0:\nkvm:x:{KVM_GID}:\nsgx:x:{SGX_GID}:libvirt-qemu\nother:x:110:\n"
    )
    node = tmp_path / "dev/sgx_vepc"
    node.write_bytes(b"")
    tree = HostTree(tmp_path)

    def access(uid: int, gid: int, mode: int, acl: list[tuple[int, int, int]] | None = None):
        os.chown(node, uid, gid)
        os.chmod(node, mode)
        if acl is not None:
            blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in acl)
            try:
                os.setxattr(node, "system.posix_acl_access", blob)
            except OSError as exc:
                pytest.skip(f"file system without POSIX ACLs: {exc}")
        return _can_open_rw(tree, tree.stat_node("/dev/sgx_vepc"), "libvirt-qemu")

    return access


def test_owner_is_judged_by_owner_bits_only(device):
    assert device(QEMU_UID, 0, 0o066) == (False, "owner")
    assert device(QEMU_UID, 0, 0o600) == (True, "owner")


def test_supplementary_group_grants(device):
    assert device(0, SGX_GID, 0o660) == (True, "group sgx")


def test_group_member_does_not_fall_back_to_other(device):
    ok, how = device(0, SGX_GID, 0o606)
    assert not ok and how == "group sgx"


def test_other_bits_for_strangers(device):
    assert device(0, 110, 0o666) == (True, "world read-write")
    assert device(0, 110, 0o660) == (False, "other")


def test_acl_group_entry_grants_within_mask(device):
    # user::rw- group::--- group:kvm:rw- mask::rw- other::---
    entries = [
        (0x01, 6, 0xFFFFFFFF),
        (0x04, 0, 0xFFFFFFFF),
        (0x08, 6, KVM_GID),
        (0x10, 6, 0xFFFFFFFF),
        (0x20, 0, 0xFFFFFFFF),
    ]
    assert device(0, 0, 0o660, entries) == (True, "ACL group:kvm")


def test_acl_mask_limits_named_entries(device):
    # user:libvirt-qemu:rw- but mask::r--
    entries = [
        (0x01, 6, 0xFFFFFFFF),
        (0x02, 6, QEMU_UID),
        (0x04, 0, 0xFFFFFFFF),
        (0x10, 4, 0xFFFFFFFF),
        (0x20, 0, 0xFFFFFFFF),
    ]
    ok, how = device(0, 0, 0o640, entries)
    assert not ok and how == "ACL user:libvirt-qemu"
