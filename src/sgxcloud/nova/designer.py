"""Shape a Nova guest config for SGX: the EPC device and what libvirt needs around it.

libvirt accepts an ``sgx-epc`` memory device only when the domain has
``<maxMemory slots=...>`` large enough for it and at least one guest NUMA
cell (memory-hotplug rules apply to every memory device).
"""

from __future__ import annotations

from collections.abc import Mapping

from nova.virt.libvirt import config as vconfig

from sgxcloud.nova.config import LibvirtConfigGuestSGXEPC
from sgxcloud.nova.host import SGXCapabilities
from sgxcloud.nova.requirements import SGXRequest
from sgxcloud.sgx.epc import mib_to_kib


def choose_host_nodemask(
    capabilities: SGXCapabilities,
    size_kib: int,
    used_kib_by_node: Mapping[int, int],
    preferred_nodes: set[int] | None = None,
) -> set[int] | None:
    """Host NUMA nodes the guest's EPC is taken from.

    One node with enough free EPC is best (EPC local to the vCPUs); among
    those, nodes the guest is pinned to come first, then the most free EPC.
    If no single node has room, bind to every node with EPC and let QEMU
    take it from all of them.  ``None`` when libvirt reports no sections.
    """
    if not capabilities.sections_kib:
        return None
    free = {
        node: size - used_kib_by_node.get(node, 0)
        for node, size in capabilities.sections_kib.items()
    }
    fitting = [node for node, room in free.items() if room >= size_kib]
    if fitting:
        preferred = preferred_nodes or set()
        best = max(fitting, key=lambda node: (node in preferred, free[node], -node))
        return {best}
    return set(capabilities.sections_kib)


def add_sgx_epc(
    guest: vconfig.LibvirtConfigGuest,
    request: SGXRequest,
    capabilities: SGXCapabilities,
    host_nodemask: set[int] | None,
) -> LibvirtConfigGuestSGXEPC:
    """Give ``guest`` ``request.epc_mb`` MiB of virtual EPC and the CPU
    features to use it; returns the EPC device added."""
    size_kib = mib_to_kib(request.epc_mb)
    _ensure_guest_numa_cell(guest)
    device = LibvirtConfigGuestSGXEPC(
        target_size_kib=size_kib,
        target_node=guest.cpu.numa.cells[0].id,
        source_nodemask=host_nodemask,
    )
    # Like vPMEM: maxMemory must cover RAM plus every memory device, one slot each.
    guest.max_memory_size = (guest.max_memory_size or guest.memory) + size_kib
    guest.max_memory_slots = (guest.max_memory_slots or 0) + 1
    guest.add_device(device)
    _add_cpu_features(guest.cpu, request, capabilities)
    return device


def _ensure_guest_numa_cell(guest: vconfig.LibvirtConfigGuest) -> None:
    if guest.cpu is None:
        guest.cpu = vconfig.LibvirtConfigGuestCPU()
        guest.cpu.mode = "host-model"
    if guest.cpu.numa is not None and guest.cpu.numa.cells:
        return
    cell = vconfig.LibvirtConfigGuestCPUNUMACell()
    cell.id = 0
    cell.cpus = set(range(guest.vcpus))
    cell.memory = guest.memory
    guest.cpu.numa = vconfig.LibvirtConfigGuestCPUNUMA()
    guest.cpu.numa.cells.append(cell)


def _add_cpu_features(
    cpu: vconfig.LibvirtConfigGuestCPU,
    request: SGXRequest,
    capabilities: SGXCapabilities,
) -> None:
    wanted = ["sgx", "sgx1"]
    if capabilities.flc:
        wanted.append("sgxlc")
    if request.require_sgx2:
        wanted.append("sgx2")
    if request.provision_key:
        wanted.append("sgx-provisionkey")
    present = {feature.name for feature in cpu.features}
    for name in wanted:
        if name not in present:
            cpu.add_feature(vconfig.LibvirtConfigGuestCPUFeature(name, policy="require"))
