"""Shaping a guest for SGX: EPC device, NUMA cell, maxMemory, CPU features."""

from __future__ import annotations

from nova.virt.libvirt import config as vconfig

from sgxcloud.nova.config import sgx_epc_devices
from sgxcloud.nova.designer import add_sgx_epc, choose_host_nodemask
from sgxcloud.nova.host import SGXCapabilities
from sgxcloud.nova.requirements import SGXRequest

MIB = 1024
TWO_NODES = SGXCapabilities(
    supported=True,
    flc=True,
    sgx1=True,
    sgx2=False,
    epc_total_kib=256 * MIB,
    sections_kib={0: 64 * MIB, 1: 192 * MIB},
)


def guest(vcpus=2, memory_kib=512 * MIB):
    g = vconfig.LibvirtConfigGuest()
    g.virt_type, g.name, g.uuid = "kvm", "instance-1", "3f1c5b57-0d6e-4b07-8f0f-2d1f0a1c2b3d"
    g.memory, g.vcpus = memory_kib, vcpus
    g.os_type = "hvm"
    g.cpu = vconfig.LibvirtConfigGuestCPU()
    g.cpu.mode = "host-model"
    return g


def test_nodemask_prefers_single_node_with_most_room():
    assert choose_host_nodemask(TWO_NODES, 32 * MIB, {}) == {1}
    assert choose_host_nodemask(TWO_NODES, 32 * MIB, {1: 180 * MIB}) == {0}


def test_nodemask_prefers_pinned_node_when_it_fits():
    assert choose_host_nodemask(TWO_NODES, 32 * MIB, {}, preferred_nodes={0}) == {0}


def test_nodemask_spans_nodes_when_none_fits_alone():
    assert choose_host_nodemask(TWO_NODES, 200 * MIB, {}) == {0, 1}


def test_no_sections_lets_qemu_choose():
    caps = SGXCapabilities(supported=True, epc_total_kib=92 * MIB)
    assert choose_host_nodemask(caps, 16 * MIB, {}) is None


def test_add_sgx_epc_builds_what_libvirt_requires():
    g = guest()
    add_sgx_epc(g, SGXRequest(epc_mb=64, provision_key=True), TWO_NODES, {1})
    xml = g.to_xml()
    (device,) = sgx_epc_devices(xml)
    assert device.target_size_kib == 64 * MIB and device.target_node == 0
    assert device.source_nodemask == {1}
    assert g.max_memory_size == 512 * MIB + 64 * MIB and g.max_memory_slots == 1
    assert [c.id for c in g.cpu.numa.cells] == [0]
    assert g.cpu.numa.cells[0].cpus == {0, 1}
    names = {f.name for f in g.cpu.features}
    assert names == {"sgx", "sgx1", "sgxlc", "sgx-provisionkey"}


def test_features_follow_request_and_host():
    g = guest()
    caps = SGXCapabilities(supported=True, flc=False, sgx2=True, epc_total_kib=64 * MIB)
    add_sgx_epc(g, SGXRequest(epc_mb=8, require_sgx2=True), caps, None)
    assert {f.name for f in g.cpu.features} == {"sgx", "sgx1", "sgx2"}


def test_existing_numa_topology_is_kept():
    g = guest(vcpus=4)
    numa = vconfig.LibvirtConfigGuestCPUNUMA()
    for cell_id in (0, 1):
        cell = vconfig.LibvirtConfigGuestCPUNUMACell()
        cell.id, cell.cpus, cell.memory = cell_id, {2 * cell_id, 2 * cell_id + 1}, 256 * MIB
        numa.cells.append(cell)
    g.cpu.numa = numa
    add_sgx_epc(g, SGXRequest(epc_mb=16), TWO_NODES, {0})
    assert len(g.cpu.numa.cells) == 2
