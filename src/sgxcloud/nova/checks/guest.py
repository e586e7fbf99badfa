"""What does SGX look like from inside a virtual machine?

Run in the guest.  Looks at the same kernel interfaces as the host check but
judges them as a tenant would: is SGX visible, how much EPC did this VM get
(the in-kernel driver's sysfs, CPUID leaf 0x12 as QEMU presents it), and, for
guests running the SCONE-patched out-of-tree ``isgx`` driver, its page
counters in ``/sys/module/isgx/parameters``.
"""

from __future__ import annotations

import os

from sgxcloud.nova import compat
from sgxcloud.nova.checks import sysfacts
from sgxcloud.nova.checks.cpuid import CpuidReader
from sgxcloud.nova.checks.model import Finding, Report, failure, ok, warning
from sgxcloud.nova.checks.tree import HostTree, TreeReadError
from sgxcloud.sgx.epc import bytes_to_mib, pages_to_mib

ISGX_PARAMETERS = "/sys/module/isgx/parameters"
ISGX_COUNTERS = (
    "sgx_nr_total_epc_pages",
    "sgx_nr_free_pages",
    "sgx_nr_low_pages",
    "sgx_nr_high_pages",
    "sgx_nr_marked_old",
    "sgx_nr_evicted",
    "sgx_nr_alloc_pages",
)
# In-kernel driver devices (>= 5.11) and the out-of-tree isgx driver's device.
ENCLAVE_DEVICES = ("/dev/sgx_enclave", "/dev/isgx", "/dev/sgx/enclave")
PROVISION_DEVICES = ("/dev/sgx_provision", "/dev/sgx/provision")
NODE_EPC_GLOB = "/sys/devices/system/node/node*/x86/sgx_total_bytes"
# The kernel version lives in compat (the one place that knows versions).
_DRIVER_KERNEL = compat.dotted(compat.MIN_KERNEL_SGX_DRIVER)


def check_guest(root: str | os.PathLike[str] = "/") -> Report:
    tree = HostTree(root)
    report = Report(tool="guest-check", root=str(tree.root))
    report.add(*_check_flags(tree))
    report.add(*_check_devices(tree))
    epc_sources: dict[str, float] = {}
    report.add(*_check_kernel_epc(tree, epc_sources, report.facts))
    counters = _isgx_counters(tree, report)
    if counters.get("sgx_nr_total_epc_pages"):
        epc_sources["isgx"] = counters["sgx_nr_total_epc_pages"]["mib"]
    report.facts["epc_mib"] = epc_sources
    report.facts["isgx"] = counters if tree.exists(ISGX_PARAMETERS) else None
    if not epc_sources:
        report.add(
            failure(
                "guest.epc",
                "no EPC visible to this guest from any source",
                "give the flavor resources:CUSTOM_SGX_EPC_MB and check 'sgxcloud host vm-epc' "
                "on its host",
            )
        )
    else:
        sizes = ", ".join(f"{src}: {mib:g} MiB" for src, mib in epc_sources.items())
        status = ok if len(set(epc_sources.values())) == 1 else warning
        if status is ok:
            report.add(ok("guest.epc", f"EPC visible to the guest ({sizes})"))
        else:
            report.add(
                warning(
                    "guest.epc",
                    f"EPC sources disagree ({sizes})",
                    "compare with the flavor's CUSTOM_SGX_EPC_MB; the kernel may hold back pages",
                )
            )
    return report


def _check_flags(tree: HostTree) -> list[Finding]:
    try:
        flags = set.intersection(*sysfacts.cpu_flags(tree.read_text("/proc/cpuinfo")))
    except TreeReadError as exc:
        return [failure("guest.flags", f"cannot read CPU flags: {exc}", "mount /proc")]
    except ValueError as exc:
        return [failure("guest.flags", f"/proc/cpuinfo: {exc}", "check /proc/cpuinfo")]
    if "sgx" in flags:
        findings = [ok("guest.flags.sgx", "CPU flag 'sgx' visible in the guest")]
    elif _kernel_predates_flags(tree) and tree.exists(ISGX_PARAMETERS):
        # Older kernels never list 'sgx'; the loaded isgx driver proves SGX is there.
        findings = [
            warning(
                "guest.flags.sgx",
                f"no 'sgx' flag, but this kernel predates it ({_DRIVER_KERNEL}) and the isgx "
                "driver is loaded",
                f"nothing to do for isgx; a guest kernel >= {_DRIVER_KERNEL} shows the flag and "
                "has its own driver",
            )
        ]
    else:
        findings = [
            failure(
                "guest.flags.sgx",
                "CPU flag 'sgx' not visible: the VM has no SGX",
                "boot the VM from an SGX flavor (trait:HW_CPU_X86_SGX=required)",
            )
        ]
    if "sgx_lc" in flags:
        findings.append(
            ok("guest.flags.sgx_lc", "CPU flag 'sgx_lc' visible: the guest may launch any enclave")
        )
    else:
        findings.append(
            warning(
                "guest.flags.sgx_lc",
                "CPU flag 'sgx_lc' not visible: launch control unknown or locked",
                "ask for a flavor with launch control (sgx:flc) if enclaves fail to start",
            )
        )
    return findings


def _kernel_predates_flags(tree: HostTree) -> bool:
    try:
        kernel = sysfacts.kernel_version(tree.read_text("/proc/sys/kernel/osrelease"))
        return compat.older_than(kernel[:2], compat.MIN_KERNEL_SGX_DRIVER)
    except (TreeReadError, ValueError):
        return False


def _check_devices(tree: HostTree) -> list[Finding]:
    enclave = [p for p in ENCLAVE_DEVICES if tree.exists(p)]
    provision = [p for p in PROVISION_DEVICES if tree.exists(p)]
    findings = []
    if enclave:
        findings.append(ok("guest.device.enclave", f"enclave device present: {', '.join(enclave)}"))
    else:
        findings.append(
            failure(
                "guest.device.enclave",
                "no enclave device (/dev/sgx_enclave or /dev/isgx)",
                f"use a guest kernel >= {_DRIVER_KERNEL} with CONFIG_X86_SGX, or load the isgx "
                "driver",
            )
        )
    if provision:
        findings.append(
            ok("guest.device.provision", f"provisioning device present: {', '.join(provision)}")
        )
    else:
        findings.append(
            warning(
                "guest.device.provision",
                "no provisioning device: DCAP attestation from this guest will fail",
                "ask for a flavor with the provisioning key (sgx:provision)",
            )
        )
    return findings


def _check_kernel_epc(tree: HostTree, sources: dict[str, float], facts: dict) -> list[Finding]:
    findings = []
    total = 0
    readable = False
    for path in tree.glob(NODE_EPC_GLOB):
        try:
            total += tree.read_int(path)
            readable = True
        except TreeReadError as exc:
            findings.append(
                warning(
                    "guest.epc.sysfs",
                    f"EPC figure unreadable: {exc}",
                    "the kernel writes a byte count there; check the file",
                )
            )
    if readable:
        sources["kernel sysfs"] = bytes_to_mib(total)
    try:
        cpuid = CpuidReader(tree).sgx()
    except TreeReadError as exc:
        facts["cpuid_error"] = str(exc)  # optional source: the others may suffice
        return findings
    if cpuid.epc_bytes:
        sources["CPUID 0x12"] = bytes_to_mib(cpuid.epc_bytes)
    return findings


def _isgx_counters(tree: HostTree, report: Report) -> dict[str, dict[str, float]]:
    """The isgx driver's counters as {name: {pages, mib}}; empty when isgx is absent."""
    if not tree.exists(ISGX_PARAMETERS):
        return {}
    counters: dict[str, dict[str, float]] = {}
    for name in ISGX_COUNTERS:
        path = f"{ISGX_PARAMETERS}/{name}"
        try:
            pages = tree.read_int(path)
        except TreeReadError as exc:
            report.add(
                warning(
                    f"guest.isgx.{name}",
                    f"isgx counter unreadable: {exc}",
                    "use the SCONE-patched isgx driver, which exports it",
                )
            )
            continue
        counters[name] = {"pages": pages, "mib": pages_to_mib(pages)}
    total = counters.get("sgx_nr_total_epc_pages")
    free = counters.get("sgx_nr_free_pages")
    if total is not None:
        spare = f", {free['pages']} free" if free is not None else ""
        report.add(
            ok(
                "guest.isgx",
                f"isgx driver: {total['pages']} EPC pages ({total['mib']:g} MiB){spare}",
            )
        )
    return counters
