"""``check_guest`` inside VMs: the isgx driver's counters and the in-kernel view."""

from __future__ import annotations

from sgxcloud.nova.checks import Status, check_guest


def test_isgx_counters_as_pages_and_mib(tree):
    report = check_guest(tree("guest-isgx"))
    assert report.ready
    isgx = report.facts["isgx"]
    assert isgx["sgx_nr_total_epc_pages"] == {"pages": 2048, "mib": 8.0}
    assert isgx["sgx_nr_free_pages"] == {"pages": 1536, "mib": 6.0}
    assert set(isgx) == {
        "sgx_nr_total_epc_pages", "sgx_nr_free_pages", "sgx_nr_low_pages", "sgx_nr_high_pages",
        "sgx_nr_marked_old", "sgx_nr_evicted", "sgx_nr_alloc_pages",
    }  # fmt: skip
    assert report.facts["epc_mib"] == {"isgx": 8.0}
    # A 5.4 kernel never lists 'sgx'; the loaded isgx driver makes that a warning only.
    flags = next(f for f in report.findings if f.check == "guest.flags.sgx")
    assert flags.status is Status.WARNING


def test_garbage_counter_is_a_finding(tree):
    root = tree("guest-isgx")
    (root / "sys/module/isgx/parameters/sgx_nr_free_pages").write_text("-\n")
    report = check_guest(root)
    bad = next(f for f in report.findings if f.check == "guest.isgx.sgx_nr_free_pages")
    assert bad.status is Status.WARNING and "not an integer" in bad.detail
    assert "sgx_nr_free_pages" not in report.facts["isgx"]


def test_in_kernel_driver_guest_reads_sysfs_and_cpuid(tree):
    # A guest with the in-kernel driver looks like a small host from inside.
    root = tree("sgx-host-2numa")
    report = check_guest(root)
    assert report.ready
    assert report.facts["epc_mib"] == {"kernel sysfs": 16384, "CPUID 0x12": 16384}
    assert report.facts["isgx"] is None


def test_guest_without_sgx_is_not_ready(tree):
    report = check_guest(tree("sgx-disabled-in-firmware"))
    assert not report.ready and report.exit_code == 1
    failed = {f.check for f in report.findings if f.status is Status.FAILURE}
    assert {"guest.flags.sgx", "guest.device.enclave", "guest.epc"} <= failed
