"""``check_host`` on recorded nodes: ready, SGX off in firmware, old kernel, bad input."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from sgxcloud.errors import InputError
from sgxcloud.nova.checks import Status, check_host
from tests.checks.conftest import materialise


def statuses(report) -> dict[str, Status]:
    return {f.check: f.status for f in report.findings}


def finding(report, check):
    return next(f for f in report.findings if f.check == check)


def test_two_numa_sgx_host_is_ready(tree):
    report = check_host(tree("sgx-host-2numa"))
    assert report.ready and report.exit_code == 0
    assert set(statuses(report).values()) == {Status.OK}
    assert report.facts["epc_nodes"] == [
        {"node": 0, "bytes": 8 * 2**30, "mib": 8192},
        {"node": 1, "bytes": 8 * 2**30, "mib": 8192},
    ]
    # CPUID leaf 0x12 agrees with sysfs: two 8 GiB sections.
    sections = report.facts["cpuid"]["epc_sections"]
    assert [s["size_bytes"] for s in sections] == [8 * 2**30, 8 * 2**30]
    assert sections[0]["base"] == "0x4080000000"
    assert report.facts["cpuid"]["sgx2"] is True
    assert report.facts["domcaps_sgx"]["sections"] == [
        {"node": 0, "size_kib": 8388608},
        {"node": 1, "size_kib": 8388608},
    ]
    assert (report.facts["libvirt_version"], report.facts["qemu_version"]) == ("9.0.0", "7.2.0")
    assert "via group sgx" in finding(report, "device.sgx_vepc").detail


def test_sgx_disabled_in_firmware_is_not_ready(tree):
    report = check_host(tree("sgx-disabled-in-firmware"))
    assert not report.ready and report.exit_code == 1
    got = statuses(report)
    for check in ("cpu.flags.sgx", "firmware.sgx", "device.sgx_vepc", "libvirt.domcaps"):
        assert got[check] is Status.FAILURE, check
    firmware = finding(report, "firmware.sgx")
    assert "leaf 0x12" in firmware.detail and "BIOS" in firmware.fix
    assert report.facts["cpuid"] == {"sgx1": False, "sgx2": False, "epc_sections": []}
    assert got["kernel.version"] is Status.OK


def test_old_kernel_without_vepc(tree):
    report = check_host(tree("old-kernel-no-vepc"))
    got = statuses(report)
    assert got["kernel.version"] is Status.FAILURE
    vepc = finding(report, "device.sgx_vepc")
    assert vepc.status is Status.FAILURE and "5.11.0" in vepc.detail and ">= 5.13" in vepc.fix
    # The 5.11 driver's nodes exist but are root-only without a udev rule.
    assert got["device.sgx_enclave"] is Status.WARNING
    assert got["device.sgx_provision"] is Status.WARNING
    assert got["libvirt.version"] is Status.FAILURE and got["qemu.version"] is Status.FAILURE
    assert got["nova.compute_driver"] is Status.FAILURE
    assert "8192 MiB" in finding(report, "epc.numa").detail  # from CPUID when sysfs has none


def test_vepc_not_openable_by_qemu_user(tree):
    root = tree("sgx-host-2numa")
    os.chown(root / "dev/sgx_vepc", 0, 0)
    os.chmod(root / "dev/sgx_vepc", 0o600)  # the kernel's default without a udev rule
    vepc = finding(check_host(root), "device.sgx_vepc")
    assert vepc.status is Status.FAILURE
    assert "libvirt-qemu" in vepc.detail and "supported='no'" in vepc.detail


def test_vepc_posix_acl_grants_qemu_user(tree):
    root = tree("sgx-host-2numa")
    node = root / "dev/sgx_vepc"
    os.chown(node, 0, 0)
    os.chmod(node, 0o600)
    # user::rw- user:libvirt-qemu:rw- group::--- mask::rw- other::---
    import struct

    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 6, 64055), (0x04, 0, 0xFFFFFFFF),
               (0x10, 6, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]  # fmt: skip
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(node, "system.posix_acl_access", blob)
    except OSError as exc:
        pytest.skip(f"file system without POSIX ACLs: {exc}")
    vepc = finding(check_host(root), "device.sgx_vepc")
    assert vepc.status is Status.OK and "ACL user:libvirt-qemu" in vepc.detail


def test_stray_regular_file_instead_of_device(tree):
    root = tree("sgx-host-2numa")
    (root / "dev/sgx_enclave").unlink()
    (root / "dev/sgx_enclave").write_text("")
    enclave = finding(check_host(root), "device.sgx_enclave")
    assert enclave.status is Status.FAILURE and "not a character device" in enclave.detail


def test_garbage_in_sysfs_is_a_finding(tree):
    root = tree("sgx-host-2numa")
    (root / "sys/devices/system/node/node1/x86/sgx_total_bytes").write_bytes(b"\x00\xffgarbage\n")
    report = check_host(root)
    epc = [f for f in report.findings if f.check == "epc.numa"]
    bad = next(f for f in epc if "node 1" in f.detail)
    assert bad.status is Status.WARNING and "not an integer" in bad.detail
    assert report.facts["epc_nodes"] == [{"node": 0, "bytes": 8 * 2**30, "mib": 8192}]


def test_directory_where_a_file_is_expected(tree):
    root = tree("sgx-host-2numa")
    (root / "proc/cpuinfo").unlink()
    (root / "proc/cpuinfo").mkdir()
    (root / "dev/cpu/0/cpuid").unlink()
    (root / "dev/cpu/0/cpuid").mkdir()
    report = check_host(root)
    flags = finding(report, "cpu.flags")
    assert flags.status is Status.FAILURE and "is a directory" in flags.detail
    firmware = finding(report, "firmware.sgx")
    assert firmware.status is Status.WARNING and "CPUID not readable" in firmware.detail


def test_garbage_configs_are_findings(tree):
    root = tree("sgx-host-2numa")
    (root / "etc/nova/nova.conf").write_text("compute_driver = x\n[DEFAULT\n")
    (root / "var/lib/sgxcloud/domcapabilities.xml").write_text("<domainCapabilities><features>")
    (root / "proc/sys/kernel/osrelease").write_text("banana\n")
    got = statuses(check_host(root))
    assert got["nova.config"] is Status.FAILURE
    assert got["libvirt.domcaps"] is Status.FAILURE
    assert got["kernel.version"] is Status.FAILURE


def test_sgx_options_are_checked_against_the_declared_ones(tree):
    root = tree("sgx-host-2numa")
    conf = root / "etc/nova/nova.conf"
    conf.write_text(
        conf.read_text().replace("reserved_epc_mb = 64", "reserved_epc_mb = -5\nreserve_epc = 1")
    )
    sgx = finding(check_host(root), "nova.sgx_options")
    assert sgx.status is Status.FAILURE
    assert "unknown option 'reserve_epc'" in sgx.detail and "reserved_epc_mb" in sgx.detail


def test_missing_root_is_bad_input(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        check_host(tmp_path / "absent")


def test_unreadable_file_for_an_unprivileged_user():
    """Tests run as root, where chmod 000 blocks nothing: a forked child drops to
    'nobody' (the modules are already loaded) and meets a real EACCES."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="sgxcloud-unreadable-"))
    try:
        os.chmod(base, 0o755)
        root = materialise("sgx-host-2numa", base)
        os.chmod(root / "proc/cpuinfo", 0o000)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            try:
                os.setgid(65534)
                os.setuid(65534)
                report = check_host(root)
                detail = next(f.detail for f in report.findings if f.check == "cpu.flags")
                os.write(write_end, detail.encode())
            finally:
                os._exit(0)
        os.close(write_end)
        os.waitpid(pid, 0)
        with os.fdopen(read_end) as pipe:
            detail = pipe.read()
        assert "/proc/cpuinfo: permission denied" in detail
    finally:
        shutil.rmtree(base)


def test_live_machine_without_libvirt_commands():
    """On / the check may run virsh; when that fails it is a finding, not a crash.
    (test_cli_json runs the real commands once.)"""

    def refuse(argv):
        raise OSError(f"{argv[0]} failed: error: failed to connect to the hypervisor")

    report = check_host("/", runner=refuse)
    caps = finding(report, "libvirt.domcaps")
    assert caps.status is Status.FAILURE and "failed to connect" in caps.detail
    assert finding(report, "libvirt.version").status is Status.WARNING
