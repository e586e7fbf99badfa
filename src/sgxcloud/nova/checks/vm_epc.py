"""Did each SGX virtual machine really receive the EPC its domain asks for?

QEMU maps a guest's virtual EPC from ``/dev/sgx_vepc`` (kernels >= 5.13) or
``/dev/sgx/virt_epc`` (the older out-of-tree KVM SGX name); the sizes of those
mappings in ``/proc/PID/smaps`` are what the guest really got.  libvirt keeps
each running domain's live XML in ``/run/libvirt/qemu/<name>.xml`` (a
``<domstatus>`` wrapping the ``<domain>``), whose ``<memory model='sgx-epc'>``
devices say what was asked for.
"""

from __future__ import annotations

import itertools
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from sgxcloud.nova.checks import sysfacts
from sgxcloud.nova.checks.model import Finding, Report, failure, ok, warning
from sgxcloud.nova.checks.tree import HostTree, MissingFile, TreeReadError
from sgxcloud.sgx.epc import KIB

VEPC_PATHS = ("/dev/sgx_vepc", "/dev/sgx/virt_epc")
DOMAIN_XML_DIR = "/run/libvirt/qemu"
_QEMU_NAMES = ("qemu-system-", "qemu-kvm")


@dataclass(frozen=True)
class QemuProcess:
    pid: int
    name: str | None  # libvirt domain name from ``-name guest=NAME``


def find_qemu_processes(tree: HostTree) -> list[QemuProcess]:
    """QEMU processes under ``/proc``; processes that exit meanwhile are skipped."""
    found = []
    for entry in tree.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = _cmdline(tree, int(entry))
        except TreeReadError:
            continue  # exited, or a kernel thread we may not read: not ours to judge
        if argv and os.path.basename(argv[0]).startswith(_QEMU_NAMES):
            found.append(QemuProcess(int(entry), domain_name(argv)))
    return found


def _cmdline(tree: HostTree, pid: int) -> list[str]:
    raw = tree.read_bytes(f"/proc/{pid}/cmdline")
    return [arg.decode("utf-8", errors="replace") for arg in raw.split(b"\0") if arg]


def domain_name(argv: list[str]) -> str | None:
    """``-name guest=vm1,debug-threads=on`` (libvirt) or ``-name vm1`` (by hand)."""
    for flag, value in itertools.pairwise(argv):
        if flag in ("-name", "--name"):
            for part in value.split(","):
                if part.startswith("guest="):
                    return part.removeprefix("guest=")
            first = value.split(",")[0]
            return first if "=" not in first else None
    return None


def mapped_vepc_kib(smaps: str) -> int:
    """Sum of ``Size:`` of every mapping of a virtual EPC device, in KiB."""
    total = 0
    current_is_vepc = False
    for line in smaps.splitlines():
        fields = line.split()
        if not fields:
            continue
        if "-" in fields[0] and not fields[0].endswith(":"):
            # A mapping header: "start-end perms offset dev inode [path]".
            current_is_vepc = len(fields) >= 6 and fields[5] in VEPC_PATHS
        elif current_is_vepc and fields[0] == "Size:":
            if len(fields) < 3 or fields[2] != "kB" or not fields[1].isdigit():
                raise ValueError(f"unexpected smaps line {line.strip()[:40]!r}")
            total += int(fields[1])
    return total


def requested_epc_kib(domain_xml: str) -> int:
    """EPC the domain asks for: sum of ``<memory model='sgx-epc'><target><size>``."""
    try:
        root = ET.fromstring(domain_xml)  # noqa: S314 - libvirt's own status file
    except ET.ParseError as exc:
        raise ValueError(f"not XML ({exc})") from None
    domain = root if root.tag == "domain" else root.find("domain")
    if domain is None:
        raise ValueError(f"no <domain> in <{root.tag}>")
    total = 0
    for memory in domain.findall("./devices/memory[@model='sgx-epc']"):
        size = memory.find("./target/size")
        if size is None:
            raise ValueError("sgx-epc memory device without <target><size>")
        total += sysfacts.size_in_bytes(size.text or "", size.get("unit")) // KIB
    return total


def check_vm_epc(
    root: str | os.PathLike[str] = "/", pid: int | None = None, domain: str | None = None
) -> Report:
    """One finding per QEMU process (or only the one selected by ``pid``/``domain``)."""
    tree = HostTree(root)
    report = Report(tool="vm-epc", root=str(tree.root))
    processes = _selected(tree, pid, domain, report)
    vms = []
    for process in processes:
        finding, row = _check_process(tree, process)
        report.add(finding)
        vms.append(row)
    if not processes and pid is None and domain is None:
        report.add(ok("vm-epc", "no QEMU processes running"))
    report.facts["vms"] = vms
    return report


def _selected(
    tree: HostTree, pid: int | None, domain: str | None, report: Report
) -> list[QemuProcess]:
    if pid is not None:
        try:
            argv = _cmdline(tree, pid)
        except TreeReadError as exc:
            report.add(
                failure(
                    f"vm-epc.pid.{pid}",
                    f"process {pid}: {exc.reason}",
                    "list running VMs with 'virsh list' and pass a current PID",
                )
            )
            return []
        if not argv or not os.path.basename(argv[0]).startswith(_QEMU_NAMES):
            report.add(
                failure(
                    f"vm-epc.pid.{pid}",
                    f"process {pid} is not QEMU ({argv[0] if argv else 'no command line'})",
                    "pass the PID of a qemu-system process",
                )
            )
            return []
        return [QemuProcess(pid, domain_name(argv))]
    processes = find_qemu_processes(tree)
    if domain is not None:
        processes = [p for p in processes if p.name == domain]
        if not processes:
            report.add(
                failure(
                    f"vm-epc.domain.{domain}",
                    f"no running QEMU process for domain '{domain}'",
                    "check the name with 'virsh list'",
                )
            )
    return processes


def _check_process(tree: HostTree, process: QemuProcess) -> tuple[Finding, dict]:
    label = f"{process.name or 'unnamed'} (pid {process.pid})"
    check = f"vm-epc.{process.name or process.pid}"
    row: dict = {
        "pid": process.pid,
        "domain": process.name,
        "mapped_kib": None,
        "requested_kib": None,
        "status": None,
    }

    def done(finding: Finding) -> tuple[Finding, dict]:
        row["status"] = finding.status.value
        return finding, row

    try:
        row["mapped_kib"] = mapped_vepc_kib(tree.read_text(f"/proc/{process.pid}/smaps"))
    except MissingFile:
        return done(warning(check, f"{label} exited during the scan", "run the check again"))
    except TreeReadError as exc:
        return done(failure(check, f"{label}: cannot read smaps: {exc.reason}", "run as root"))
    except ValueError as exc:
        return done(
            failure(
                check, f"{label}: unreadable smaps: {exc}", "check /proc/PID/smaps is the kernel's"
            )
        )
    if process.name is None:
        return done(
            warning(
                check,
                f"{label} maps {row['mapped_kib']} KiB EPC; no domain name on its command line",
                "start VMs through libvirt so they can be matched",
            )
        )
    xml_path = f"{DOMAIN_XML_DIR}/{process.name}.xml"
    try:
        row["requested_kib"] = requested_epc_kib(tree.read_text(xml_path))
    except TreeReadError as exc:
        return done(
            warning(
                check,
                f"{label} maps {row['mapped_kib']} KiB EPC; domain XML unavailable ({exc})",
                "run on the host where libvirt runs the domain",
            )
        )
    except ValueError as exc:
        return done(failure(check, f"{label}: {xml_path}: {exc}", "check the libvirt status file"))
    mapped, requested = row["mapped_kib"], row["requested_kib"]
    if mapped == requested:
        what = (
            f"{mapped} KiB EPC mapped as requested" if mapped else "no SGX EPC requested or mapped"
        )
        return done(ok(check, f"{label}: {what}"))
    return done(
        failure(
            check,
            f"{label}: domain asks for {requested} KiB EPC but QEMU maps {mapped} KiB",
            "the guest did not get the EPC it pays for: check QEMU's log and the host's free EPC",
        )
    )
