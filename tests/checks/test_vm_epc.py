"""``check_vm_epc`` on recorded QEMU processes: match, mismatch, vanished PID."""

from __future__ import annotations

import shutil

from sgxcloud.nova.checks import Status, check_vm_epc
from sgxcloud.nova.checks.vm_epc import domain_name, mapped_vepc_kib, requested_epc_kib


def test_both_device_names_are_summed_and_match(tree):
    report = check_vm_epc(tree("qemu-vms"))
    assert report.ready
    vms = {vm["domain"]: vm for vm in report.facts["vms"]}
    # /dev/sgx/virt_epc (old KVM SGX name) and /dev/sgx_vepc (upstream) both count.
    assert vms["instance-0000002a"]["mapped_kib"] == 8192
    assert vms["instance-0000002a"]["requested_kib"] == 8192
    assert vms["instance-0000002b"]["mapped_kib"] == 65536
    assert {vm["pid"] for vm in report.facts["vms"]} == {4242, 5151}  # not pid 1 (init)


def test_mismatch_is_a_failure(tree):
    root = tree("qemu-vms")
    xml = root / "run/libvirt/qemu/instance-0000002a.xml"
    xml.write_text(
        xml.read_text().replace("<size unit='KiB'>8192</size>", "<size unit='MiB'>16</size>")
    )
    report = check_vm_epc(root, domain="instance-0000002a")
    (only,) = report.findings
    assert only.status is Status.FAILURE
    assert "asks for 16384 KiB" in only.detail and "maps 8192 KiB" in only.detail
    assert report.exit_code == 1


def test_select_by_pid(tree):
    report = check_vm_epc(tree("qemu-vms"), pid=5151)
    assert [vm["domain"] for vm in report.facts["vms"]] == ["instance-0000002b"]


def test_vanished_pid_between_listing_and_smaps(tree):
    root = tree("qemu-vms")
    (root / "proc/4242/smaps").unlink()  # the process exited after its cmdline was read
    report = check_vm_epc(root)
    gone = next(f for f in report.findings if "4242" in f.detail)
    assert gone.status is Status.WARNING and "exited" in gone.detail
    assert report.ready  # the other VM is still checked


def test_pid_that_does_not_exist(tree):
    root = tree("qemu-vms")
    shutil.rmtree(root / "proc/5151")
    report = check_vm_epc(root, pid=5151)
    (only,) = report.findings
    assert only.status is Status.FAILURE and "does not exist" in only.detail


def test_pid_that_is_not_qemu_and_unknown_domain(tree):
    root = tree("qemu-vms")
    assert "not QEMU" in check_vm_epc(root, pid=1).findings[0].detail
    report = check_vm_epc(root, domain="nope")
    assert report.findings[0].status is Status.FAILURE and not report.facts["vms"]


def test_garbage_smaps_and_missing_xml(tree):
    root = tree("qemu-vms")
    smaps = root / "proc/4242/smaps"
    smaps.write_text(smaps.read_text().replace("Size:               8192 kB", "Size: lots"))
    (root / "run/libvirt/qemu/instance-0000002b.xml").unlink()
    got = {f.check: f for f in check_vm_epc(root).findings}
    assert got["vm-epc.instance-0000002a"].status is Status.FAILURE
    assert "unreadable smaps" in got["vm-epc.instance-0000002a"].detail
    assert got["vm-epc.instance-0000002b"].status is Status.WARNING
    assert "domain XML unavailable" in got["vm-epc.instance-0000002b"].detail


def test_parsers():
    assert domain_name(["qemu-system-x86_64", "-name", "guest=vm1,debug-threads=on"]) == "vm1"
    assert domain_name(["qemu-system-x86_64", "-name", "vm2"]) == "vm2"
    assert domain_name(["qemu-system-x86_64"]) is None
    smaps = (
        "7f00-7f80 rw-s 00000000 00:05 1 /dev/sgx_vepc\nSize:  4096 kB\n"
        "7f80-7fa0 rw-s 00000000 00:05 1 /dev/sgx_vepc\nSize:  4096 kB\n"
        "7fa0-7fb0 rw-p 00000000 00:00 0 \nSize:  64 kB\n"
    )
    assert mapped_vepc_kib(smaps) == 8192
    xml = (
        "<domain><devices><memory model='sgx-epc'><target><size unit='MiB'>8</size></target>"
        "</memory><memory model='dimm'><target><size>1024</size></target></memory>"
        "</devices></domain>"
    )
    assert requested_epc_kib(xml) == 8192
