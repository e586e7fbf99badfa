"""Is this compute node ready to host SGX virtual machines?

Each ``_check_*`` function looks at one subject and returns findings; it never
raises for a machine's state, only reports it.  ``check_host`` runs them all
in the order an operator would debug a node: silicon and firmware, kernel and
devices, EPC, libvirt/QEMU, then Nova's configuration.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence

from sgxcloud.nova import compat
from sgxcloud.nova.checks import sysfacts
from sgxcloud.nova.checks.cpuid import CpuidReader, SgxCpuid
from sgxcloud.nova.checks.model import Finding, Report, failure, ok, warning
from sgxcloud.nova.checks.tree import HostTree, MissingFile, NodeInfo, TreeReadError
from sgxcloud.sgx.epc import KIB, bytes_to_mib

# Version minima and their comparison live in sgxcloud.nova.compat (the one
# place that knows versions); the messages print them from there.
_KERNEL = compat.dotted(compat.MIN_KERNEL)
_DRIVER_KERNEL = compat.dotted(compat.MIN_KERNEL_SGX_DRIVER)

RECORDED_DIR = "/var/lib/sgxcloud"  # where a recorded tree keeps command outputs
DOMCAPS_FILE = f"{RECORDED_DIR}/domcapabilities.xml"  # `virsh domcapabilities`
VERSION_FILE = f"{RECORDED_DIR}/virsh-version.txt"  # `virsh version`
NOVA_CONF = "/etc/nova/nova.conf"
# Where nova-compute's configuration lives when no --config-file is given:
# packages and DevStack, then kolla-ansible (the host side of the container's
# /etc/nova/nova.conf).  The first that exists is read.
NOVA_CONF_CANDIDATES = (NOVA_CONF, "/etc/kolla/nova-compute/nova.conf")
QEMU_CONF = "/etc/libvirt/qemu.conf"
DRIVER = "sgxcloud.SGXLibvirtDriver"
SGX_FILTER = "SGXFilter"
NODE_EPC_GLOB = "/sys/devices/system/node/node*/x86/sgx_total_bytes"
COMMAND_TIMEOUT = 20  # seconds; virsh can hang on a wedged libvirtd

# Who runs QEMU when qemu.conf does not say: Debian/Ubuntu, then RHEL/Fedora/SUSE.
DEFAULT_QEMU_USERS = ("libvirt-qemu", "qemu")

Runner = Callable[[list[str]], str]


def run_command(argv: list[str]) -> str:
    """Run a read-only query command; raise OSError with its first error line."""
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(f"{argv[0]} not installed")
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise OSError(f"{' '.join(argv)} timed out after {COMMAND_TIMEOUT}s") from None
    if done.returncode != 0:
        first = next((ln for ln in done.stderr.splitlines() if ln.strip()), "no output")
        raise OSError(f"{' '.join(argv)} failed: {first.strip()}")
    return done.stdout


def check_host(
    root: str | os.PathLike[str] = "/",
    runner: Runner = run_command,
    config_files: Sequence[str] = (),
) -> Report:
    """Every readiness finding for the node whose files are under ``root``.

    ``runner`` runs ``virsh``/``qemu`` when ``root`` is the live ``/`` and no
    recorded output exists; on a recorded tree nothing is ever executed.
    ``config_files`` are nova-compute's configuration files in oslo.config's
    order (later ones override earlier ones); none given: the first of
    :data:`NOVA_CONF_CANDIDATES` that exists.
    """
    tree = HostTree(root)
    report = Report(tool="host-check", root=str(tree.root))
    flags = _cpu_flags(tree)
    cpuid = _cpuid(tree)
    report.add(*_check_flags(flags))
    report.add(*_check_firmware(flags, cpuid))
    kernel = _kernel(tree)
    report.add(*_check_kernel(kernel))
    report.add(*_check_devices(tree, kernel))
    report.add(*_check_epc(tree, cpuid, report.facts))
    report.add(*_check_libvirt(tree, runner, report.facts))
    report.add(*_check_nova(tree, config_files))
    report.facts.update(
        {
            "flags": sorted({"sgx", "sgx_lc"} & flags) if isinstance(flags, set) else [],
            "kernel": sysfacts.version_text(kernel) if isinstance(kernel, tuple) else None,
            "cpuid": _cpuid_facts(cpuid),
        }
    )
    return report


# -- silicon and firmware ---------------------------------------------------


def _cpu_flags(tree: HostTree) -> set[str] | Finding:
    try:
        per_cpu = sysfacts.cpu_flags(tree.read_text("/proc/cpuinfo"))
    except TreeReadError as exc:
        return failure(
            "cpu.flags", f"cannot read CPU flags: {exc}", "check the path; /proc must be mounted"
        )
    except ValueError as exc:
        return failure(
            "cpu.flags", f"/proc/cpuinfo: {exc}", "check that /proc/cpuinfo is a real cpuinfo"
        )
    # A flag only counts when every CPU has it: QEMU may run on any of them.
    return set.intersection(*per_cpu)


def _cpuid(tree: HostTree) -> SgxCpuid | TreeReadError:
    try:
        return CpuidReader(tree).sgx()
    except TreeReadError as exc:
        return exc


def _cpuid_facts(cpuid: SgxCpuid | TreeReadError) -> dict | None:
    if isinstance(cpuid, TreeReadError):
        return None
    return {
        "sgx1": cpuid.sgx1,
        "sgx2": cpuid.sgx2,
        "epc_sections": [
            {"base": f"{s.base:#x}", "size_bytes": s.size_bytes} for s in cpuid.sections
        ],
    }


def _check_flags(flags: set[str] | Finding) -> list[Finding]:
    if isinstance(flags, Finding):
        return [flags]
    findings = []
    if "sgx" in flags:
        findings.append(ok("cpu.flags.sgx", "CPU flag 'sgx' present on every CPU"))
    else:
        findings.append(
            failure(
                "cpu.flags.sgx",
                "CPU flag 'sgx' missing from /proc/cpuinfo",
                "enable SGX in firmware (BIOS: SGX = Enabled, PRMRR size > 0) and boot a "
                "kernel with CONFIG_X86_SGX",
            )
        )
    if "sgx_lc" in flags:
        findings.append(
            ok("cpu.flags.sgx_lc", "CPU flag 'sgx_lc' present: launch control is unlocked")
        )
    else:
        findings.append(
            failure(
                "cpu.flags.sgx_lc",
                "CPU flag 'sgx_lc' missing: no flexible launch control, so guests cannot run "
                "their own launch policy",
                "set SGX launch control to 'unlocked' in firmware; without FLC the in-kernel "
                "driver will not serve guests",
            )
        )
    return findings


def _check_firmware(flags: set[str] | Finding, cpuid: SgxCpuid | TreeReadError) -> list[Finding]:
    has_flag = isinstance(flags, set) and "sgx" in flags
    if isinstance(cpuid, TreeReadError):
        detail = f"CPUID not readable ({cpuid.reason}); judged from CPU flags only"
        if has_flag:
            return [ok("firmware.sgx", f"SGX enabled (kernel flag); {detail}")]
        return [
            warning(
                "firmware.sgx",
                f"cannot tell whether the CPU lacks SGX or firmware disabled it: {detail}",
                "run as root with 'modprobe cpuid' to read CPUID leaf 0x12",
            )
        ]
    if not cpuid.sgx1:
        return [
            failure(
                "firmware.sgx",
                "CPUID leaf 0x12 reports no SGX1: SGX is disabled in firmware (or absent from "
                "this CPU)",
                "enable SGX in the BIOS/UEFI setup (SGX = Enabled, PRMRR size set) and reboot",
            )
        ]
    if not has_flag:
        return [
            failure(
                "firmware.sgx",
                "CPUID reports SGX1 but the kernel cleared the 'sgx' flag (firmware left it "
                "unlocked "
                "or launch control locked); see dmesg for 'SGX disabled by BIOS'",
                "set SGX = Enabled (not Software Controlled) and launch control unlocked in "
                "firmware",
            )
        ]
    kinds = "SGX1" + (" + SGX2" if cpuid.sgx2 else "")
    return [
        ok(
            "firmware.sgx",
            f"SGX enabled in firmware: {kinds}, {len(cpuid.sections)} EPC section(s) in CPUID "
            "leaf 0x12",
            sgx2=cpuid.sgx2,
        )
    ]


# -- kernel and devices -----------------------------------------------------


def _kernel(tree: HostTree) -> tuple[int, int, int] | Finding:
    try:
        return sysfacts.kernel_version(tree.read_text("/proc/sys/kernel/osrelease"))
    except TreeReadError as exc:
        return failure(
            "kernel.version",
            f"cannot read the kernel release: {exc}",
            "check that /proc is mounted",
        )
    except ValueError as exc:
        return failure(
            "kernel.version",
            f"/proc/sys/kernel/osrelease: {exc}",
            "check that the file is a kernel release",
        )


def _check_kernel(kernel: tuple[int, int, int] | Finding) -> list[Finding]:
    if isinstance(kernel, Finding):
        return [kernel]
    text = sysfacts.version_text(kernel)
    if compat.older_than(kernel[:2], compat.MIN_KERNEL):
        return [
            failure(
                "kernel.version",
                f"kernel {text} predates virtual EPC (/dev/sgx_vepc arrived in {_KERNEL})",
                f"boot a kernel >= {_KERNEL} with CONFIG_X86_SGX and CONFIG_X86_SGX_KVM",
            )
        ]
    return [ok("kernel.version", f"kernel {text} supports virtual EPC (>= {_KERNEL})")]


def qemu_user(tree: HostTree) -> str:
    """The user libvirt runs QEMU as: qemu.conf's ``user``, else the distribution default."""
    try:
        for line in tree.read_text(QEMU_CONF).splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "user":
                return value.strip().strip('"')
    except TreeReadError:
        pass
    for user in DEFAULT_QEMU_USERS:
        if tree.user_uid(user) is not None:
            return user
    return DEFAULT_QEMU_USERS[0]


def _can_open_rw(tree: HostTree, node: NodeInfo, user: str) -> tuple[bool, str]:
    """Whether ``user`` may open ``node`` read-write, and through what.

    POSIX order (acl(5), "Access check algorithm"): the owner is judged by
    the owner bits alone; then a named-user ACL entry; then the owning group
    and named-group entries (any granting one suffices, all limited by the
    ACL mask); only a user in none of those classes gets the "other" bits.
    """
    rw = 0o6
    uid = tree.user_uid(user)
    if uid is not None and uid == node.uid:
        return (node.mode >> 6) & rw == rw, "owner"
    try:
        acl = sysfacts.parse_posix_acl(os.getxattr(tree.path(node.path), "system.posix_acl_access"))
    except (OSError, ValueError):
        acl = None
    mask = 0o7 if acl is None or acl.mask is None else acl.mask
    if acl is not None and uid is not None and uid in acl.users:
        return acl.users[uid] & mask & rw == rw, f"ACL user:{user}"
    gids = tree.user_gids(user)
    matched = []
    if node.gid in gids:
        matched.append((((node.mode >> 3) & 0o7) & mask, f"group {tree.group_name(node.gid)}"))
    if acl is not None:
        matched += [
            (perm & mask, f"ACL group:{tree.group_name(gid)}")
            for gid, perm in acl.groups.items()
            if gid in gids
        ]
    if matched:
        granting = [how for perm, how in matched if perm & rw == rw]
        return (True, granting[0]) if granting else (False, matched[0][1])
    return node.mode & rw == rw, "world read-write" if node.mode & rw == rw else "other"


def _describe(tree: HostTree, node: NodeInfo) -> str:
    groups = tree.group_names()
    return f"mode {node.mode_text}, group {groups.get(node.gid, node.gid)}"


def _check_devices(tree: HostTree, kernel: tuple[int, int, int] | Finding) -> list[Finding]:
    user = qemu_user(tree)
    findings = []
    nodes: dict[str, NodeInfo | Finding] = {}
    for name in ("sgx_enclave", "sgx_provision", "sgx_vepc"):
        path = f"/dev/{name}"
        try:
            node = tree.stat_node(path)
        except MissingFile:
            nodes[name] = _missing_device(name, kernel)
            continue
        except TreeReadError as exc:
            nodes[name] = failure(
                f"device.{name}", f"cannot inspect {path}: {exc.reason}", "run as root"
            )
            continue
        if not node.is_char_device:
            nodes[name] = failure(
                f"device.{name}",
                f"{path} is not a character device",
                f"remove the stray {path} and reboot or reload the SGX driver",
            )
            continue
        nodes[name] = node
    for name, node in nodes.items():
        if isinstance(node, Finding):
            findings.append(node)
        else:
            findings.append(_device_permissions(tree, name, node, user))
    return findings


def _missing_device(name: str, kernel: tuple[int, int, int] | Finding) -> Finding:
    path = f"/dev/{name}"
    if name == "sgx_vepc":
        if isinstance(kernel, tuple) and compat.older_than(kernel[:2], compat.MIN_KERNEL):
            why = f"kernel {sysfacts.version_text(kernel)} has no virtual EPC"
            fix = f"boot a kernel >= {_KERNEL} with CONFIG_X86_SGX_KVM=y"
        else:
            why = "no virtual EPC device: SGX disabled or the kernel lacks CONFIG_X86_SGX_KVM"
            fix = "enable SGX in firmware and use a kernel with CONFIG_X86_SGX_KVM=y"
        return failure("device.sgx_vepc", f"{path} missing: {why}", fix)
    return failure(
        f"device.{name}",
        f"{path} missing: the in-kernel SGX driver is not active",
        f"enable SGX in firmware and boot a kernel >= {_DRIVER_KERNEL} with CONFIG_X86_SGX=y",
    )


def _device_permissions(tree: HostTree, name: str, node: NodeInfo, user: str) -> Finding:
    check = f"device.{name}"
    facts = {"mode": node.mode_text, "group": tree.group_names().get(node.gid, str(node.gid))}
    described = _describe(tree, node)
    if name == "sgx_vepc":
        allowed, via = _can_open_rw(tree, node, user)
        if not allowed:
            return failure(
                check,
                f"/dev/sgx_vepc ({described}) cannot be opened by QEMU's user '{user}': "
                "QEMU then has no memory-backend-epc and libvirt reports <sgx supported='no'>",
                f"add '{user}' to group sgx with /dev/sgx_vepc root:sgx 0660 (systemd udev "
                "rule), then restart libvirtd",
                **facts,
            )
        if via == "world read-write":
            return warning(
                check,
                f"/dev/sgx_vepc ({described}) is world read-write: any local user can take EPC "
                "from guests",
                "use root:sgx 0660 (systemd's udev rule) and put the QEMU user in group sgx",
                **facts,
            )
        return ok(
            check, f"/dev/sgx_vepc ({described}) usable by QEMU's user '{user}' via {via}", **facts
        )
    if name == "sgx_provision":
        if node.mode & 0o006:
            return warning(
                check,
                f"/dev/sgx_provision ({described}) is world-accessible: any user can use the "
                "provisioning key",
                "chmod 0660 /dev/sgx_provision, group sgx_prv (Intel's udev rule)",
                **facts,
            )
        allowed, via = _can_open_rw(tree, node, user)
        if not allowed:
            return warning(
                check,
                f"/dev/sgx_provision ({described}): QEMU's user '{user}' cannot pass the "
                "provisioning key "
                "to guests, so guests cannot run DCAP quoting enclaves",
                f"add '{user}' to group sgx_prv (device root:sgx_prv 0660) if guests need "
                "attestation",
                **facts,
            )
        return ok(check, f"/dev/sgx_provision ({described}) usable by '{user}' via {via}", **facts)
    # sgx_enclave: for enclaves on the host itself (e.g. platform registration).
    if node.mode & 0o006 == 0o006 or node.mode & 0o060 == 0o060:
        return ok(check, f"/dev/sgx_enclave ({described}) open to host enclave users", **facts)
    return warning(
        check,
        f"/dev/sgx_enclave ({described}) is root-only: host services (aesmd, registration) "
        "cannot create enclaves",
        "install the udev rule: sgx_enclave root:sgx 0660 (systemd) or 0666 (Intel SGX packages)",
        **facts,
    )


# -- EPC --------------------------------------------------------------------


def _check_epc(tree: HostTree, cpuid: SgxCpuid | TreeReadError, facts: dict) -> list[Finding]:
    paths = tree.glob(NODE_EPC_GLOB)
    nodes = []
    findings = []
    for path in paths:
        node = int(re.search(r"/node(\d+)/x86/", path)[1])
        try:
            size = tree.read_int(path)
        except TreeReadError as exc:
            findings.append(
                warning(
                    "epc.numa",
                    f"EPC of NUMA node {node} unknown: {exc}",
                    "check the sysfs file; the kernel writes a byte count",
                )
            )
            continue
        nodes.append({"node": node, "bytes": size, "mib": bytes_to_mib(size)})
    facts["epc_nodes"] = nodes
    facts["epc_total_mib"] = bytes_to_mib(sum(n["bytes"] for n in nodes)) if nodes else None
    cpuid_bytes = None if isinstance(cpuid, TreeReadError) else cpuid.epc_bytes
    if not paths:
        if tree.listdir("/sys/devices/system/node"):
            findings.append(
                warning(
                    "epc.numa",
                    "this kernel does not publish EPC per NUMA node (no node*/x86/sgx_total_bytes)"
                    + (
                        f"; CPUID reports {bytes_to_mib(cpuid_bytes)} MiB in total"
                        if cpuid_bytes
                        else ""
                    ),
                    "use a newer kernel to see per-node EPC; libvirt's <sections> show it too",
                )
            )
        else:
            findings.append(
                warning(
                    "epc.numa", "no NUMA information under /sys/devices/system/node", "mount sysfs"
                )
            )
        return findings
    if nodes:
        per_node = ", ".join(f"node {n['node']}: {n['mib']} MiB" for n in nodes)
        total = sum(n["bytes"] for n in nodes)
        if total == 0:
            findings.append(
                failure(
                    "epc.numa",
                    f"no EPC on any NUMA node ({per_node})",
                    "set the PRMRR/EPC size in firmware",
                )
            )
        elif cpuid_bytes and cpuid_bytes != total:
            findings.append(
                warning(
                    "epc.numa",
                    f"sysfs EPC ({per_node}) differs from CPUID sections "
                    f"({bytes_to_mib(cpuid_bytes)} MiB)",
                    "some EPC sections were not given to the kernel; check dmesg for 'sgx:' errors",
                )
            )
        else:
            suffix = f"; matches {len(cpuid.sections)} CPUID section(s)" if cpuid_bytes else ""
            findings.append(
                ok("epc.numa", f"EPC {per_node} (total {bytes_to_mib(total)} MiB){suffix}")
            )
    return findings


# -- libvirt and QEMU -------------------------------------------------------


def _recorded_or_run(tree: HostTree, machine_path: str, argv: list[str], runner: Runner) -> str:
    """A recorded command output from the tree, or the command's live output on ``/``."""
    if tree.exists(machine_path) or not tree.is_live:
        return tree.read_text(machine_path)
    return runner(argv)


def _check_libvirt(tree: HostTree, runner: Runner, facts: dict) -> list[Finding]:
    findings = []
    versions = _versions(tree, runner, findings)
    facts["libvirt_version"] = sysfacts.version_text(versions.libvirt) if versions.libvirt else None
    facts["qemu_version"] = sysfacts.version_text(versions.qemu) if versions.qemu else None
    for check, found, minimum, what in (
        ("libvirt.version", versions.libvirt, compat.MIN_LIBVIRT, "libvirt"),
        ("qemu.version", versions.qemu, compat.MIN_QEMU, "QEMU"),
    ):
        need = sysfacts.version_text(minimum)
        if found is None:
            continue  # already reported by _versions
        if compat.older_than(found, minimum):
            findings.append(
                failure(
                    check,
                    f"{what} {sysfacts.version_text(found)} is older than {need}, the first "
                    "with SGX EPC",
                    f"upgrade {what} to >= {need}",
                )
            )
        else:
            findings.append(ok(check, f"{what} {sysfacts.version_text(found)} (>= {need})"))
    try:
        xml = _recorded_or_run(
            tree, DOMCAPS_FILE, ["virsh", "domcapabilities", "--virttype", "kvm"], runner
        )
    except (TreeReadError, OSError) as exc:
        facts["domcaps_sgx"] = None
        findings.append(
            failure(
                "libvirt.domcaps",
                f"cannot get libvirt domain capabilities: {exc}",
                "start libvirtd, or record `virsh domcapabilities` output in " + DOMCAPS_FILE,
            )
        )
        return findings
    # The driver's own parser (lxml only, no Nova: this check stays fast and
    # warning-free), so this check and Placement can never disagree.
    from sgxcloud.nova.capabilities import SGXCapabilitiesError, parse_sgx_capabilities

    try:
        caps = parse_sgx_capabilities(xml)
    except SGXCapabilitiesError as exc:
        facts["domcaps_sgx"] = None
        findings.append(
            failure(
                "libvirt.domcaps",
                f"unusable domain capabilities: {exc}",
                "re-run `virsh domcapabilities`",
            )
        )
        return findings
    facts["domcaps_sgx"] = {
        "supported": caps.supported,
        "flc": caps.flc,
        "sgx1": caps.sgx1,
        "sgx2": caps.sgx2,
        "section_size_kib": caps.epc_total_kib,
        "sections": [{"node": n, "size_kib": s} for n, s in sorted(caps.sections_kib.items())],
    }
    if not caps.supported:
        findings.append(
            failure(
                "libvirt.domcaps",
                f"libvirt offers no SGX ({caps.reason}): QEMU cannot create SGX EPC memory "
                "on this host",
                "fix the findings above (firmware, /dev/sgx_vepc access, versions), then "
                "restart libvirtd to re-probe QEMU",
            )
        )
    else:
        sections = (
            ", ".join(f"node {n}: {s // KIB} MiB" for n, s in sorted(caps.sections_kib.items()))
            or "no sections listed"
        )
        findings.append(
            ok(
                "libvirt.domcaps",
                f"libvirt <sgx supported='yes'>: flc={'yes' if caps.flc else 'no'}, "
                f"sgx2={'yes' if caps.sgx2 else 'no'}, "
                f"EPC {caps.epc_total_kib // KIB} MiB ({sections})",
            )
        )
    return findings


def _versions(tree: HostTree, runner: Runner, findings: list[Finding]) -> sysfacts.Versions:
    try:
        return sysfacts.parse_virsh_version(
            _recorded_or_run(tree, VERSION_FILE, ["virsh", "version"], runner)
        )
    except (TreeReadError, OSError, ValueError) as first_error:
        if not tree.is_live:
            findings.append(
                warning(
                    "libvirt.version",
                    f"libvirt/QEMU versions unknown: {first_error}",
                    f"record `virsh version` output in {VERSION_FILE}",
                )
            )
            return sysfacts.Versions(None, None)
    # Live host without a running libvirtd: ask the installed binaries instead.
    libvirt = qemu = None
    for argv, kind in (
        (["virsh", "--version"], "libvirt"),
        (["qemu-system-x86_64", "--version"], "qemu"),
    ):
        try:
            version = sysfacts.parse_version_line(runner(argv))
        except (OSError, ValueError) as exc:
            findings.append(
                warning(f"{kind}.version", f"{kind} version unknown: {exc}", f"install {kind}")
            )
            continue
        if kind == "libvirt":
            libvirt = version
        else:
            qemu = version
    return sysfacts.Versions(libvirt, qemu)


# -- Nova -------------------------------------------------------------------


def _check_nova(tree: HostTree, config_files: Sequence[str] = ()) -> list[Finding]:
    paths = list(config_files)
    if not paths:
        found = next((p for p in NOVA_CONF_CANDIDATES if tree.exists(p)), None)
        if found is None:
            return [
                failure(
                    "nova.config",
                    f"no nova.conf found (looked for {', '.join(NOVA_CONF_CANDIDATES)})",
                    "install nova-compute and configure it for SGX (docs/operations), or "
                    "name its files with --config-file",
                )
            ]
        paths = [found]
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    for path in paths:
        try:
            # As oslo.config reads repeated --config-file: later files win.
            parser.read_string(_read_config(tree, path), source=path)
        except MissingFile:
            return [
                failure(
                    "nova.config",
                    f"{path} not found",
                    "give the path of nova-compute's nova.conf with --config-file",
                )
            ]
        except TreeReadError as exc:
            return [
                failure(
                    "nova.config",
                    f"cannot read {path}: {exc}",
                    "run as root or fix the file's permissions",
                )
            ]
        except configparser.Error as exc:
            first = str(exc).splitlines()[0]
            return [
                failure(
                    "nova.config",
                    f"{path} is not valid INI: {first}",
                    "fix the syntax error at the line shown",
                )
            ]
    findings = [ok("nova.config", f"read {', '.join(paths)}")]
    driver = parser.get("DEFAULT", "compute_driver", fallback=None)
    if driver == DRIVER:
        findings.append(ok("nova.compute_driver", f"compute_driver = {DRIVER}"))
    else:
        findings.append(
            failure(
                "nova.compute_driver",
                f"compute_driver = {driver or '(unset)'}: SGX inventory and guest XML need "
                f"{DRIVER}",
                f"set [DEFAULT] compute_driver = {DRIVER} and restart nova-compute",
            )
        )
    findings.extend(_check_sgx_section(parser))
    filters = parser.get("filter_scheduler", "enabled_filters", fallback=None)
    names = {f.strip() for f in (filters or "").split(",") if f.strip()}
    if SGX_FILTER in names:
        findings.append(
            ok(
                "nova.scheduler_filters",
                f"[filter_scheduler] enabled_filters includes {SGX_FILTER}",
            )
        )
    else:
        detail = "not set here" if filters is None else f"lacks {SGX_FILTER}"
        findings.append(
            warning(
                "nova.scheduler_filters",
                f"[filter_scheduler] enabled_filters {detail}: launch-control/SGX2 requests "
                "are not checked by the scheduler",
                f"on the scheduler host add {SGX_FILTER} to [filter_scheduler] enabled_filters",
            )
        )
    return findings


def _read_config(tree: HostTree, path: str) -> str:
    """A configuration file named on the command line.  An absolute path is
    the node's (looked up under ``--root``); a relative one, or an absolute one
    that only exists outside a recorded tree, is read as given."""
    if os.path.isabs(path) and (tree.exists(path) or not os.path.exists(path)):
        return tree.read_text(path)
    if not os.path.exists(path):
        raise MissingFile(path, "not found")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise TreeReadError(path, exc.strerror or str(exc)) from None


def _check_sgx_section(parser: configparser.ConfigParser) -> list[Finding]:
    """``[sgx]`` values checked against the options the driver declares."""
    if not parser.has_section("sgx"):
        return [
            warning(
                "nova.sgx_options",
                "no [sgx] section: all SGX options at their defaults",
                "add [sgx] (e.g. reserved_epc_mb) to nova.conf; see the sample config",
            )
        ]
    try:
        from sgxcloud.nova.conf import list_opts
    except ImportError:  # oslo.config absent: only report what is set
        declared = None
    else:
        declared = {opt.dest: opt for _group, opts in list_opts() for opt in opts}
    values = {k: v for k, v in parser.items("sgx", raw=True) if k not in parser.defaults()}
    problems = []
    for key, value in values.items():
        if declared is None:
            continue
        opt = declared.get(key)
        if opt is None:
            problems.append(f"unknown option {key!r}")
            continue
        try:
            opt.type(value)
        except (ValueError, TypeError) as exc:
            problems.append(f"{key} = {value!r}: {exc}")
    shown = ", ".join(f"{k} = {v}" for k, v in values.items()) or "defaults"
    if problems:
        return [
            failure(
                "nova.sgx_options",
                f"[sgx] has {'; '.join(problems)}",
                "fix the [sgx] options (oslo-config-generator --namespace sgxcloud lists them)",
            )
        ]
    return [ok("nova.sgx_options", f"[sgx] section valid ({shown})")]
