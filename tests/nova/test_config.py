"""Every SGX XML config class round-trips: parse(format(x)) == x."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from nova import exception

from sgxcloud.nova.config import (
    LibvirtConfigDomainCapsFeatureSGX,
    LibvirtConfigDomainCapsSGXSection,
    LibvirtConfigGuestSGXEPC,
    sgx_epc_devices,
)

sizes = st.integers(min_value=0, max_value=2**40)
nodes = st.integers(min_value=0, max_value=63)
flags = st.one_of(st.none(), st.booleans())


def round_trip(obj):
    again = type(obj)()
    again.parse_dom(etree.fromstring(obj.to_xml()))
    return again


@given(node=st.one_of(st.none(), nodes), size=sizes)
def test_section_round_trip(node, size):
    section = LibvirtConfigDomainCapsSGXSection(node=node, size_kib=size)
    assert round_trip(section) == section


@given(
    supported=st.booleans(),
    flc=flags,
    sgx1=flags,
    sgx2=flags,
    total=st.one_of(st.none(), sizes),
    sections=st.dictionaries(nodes, sizes, max_size=4),
)
def test_domain_caps_sgx_round_trip(supported, flc, sgx1, sgx2, total, sections):
    feature = LibvirtConfigDomainCapsFeatureSGX()
    feature.supported, feature.flc, feature.sgx1, feature.sgx2 = supported, flc, sgx1, sgx2
    feature.section_size_kib = total
    feature.sections = [
        LibvirtConfigDomainCapsSGXSection(node=n, size_kib=s) for n, s in sorted(sections.items())
    ]
    assert round_trip(feature) == feature


@given(
    size=sizes,
    node=st.one_of(st.none(), nodes),
    nodemask=st.one_of(st.none(), st.sets(nodes, min_size=1, max_size=8)),
)
def test_guest_epc_round_trip(size, node, nodemask):
    device = LibvirtConfigGuestSGXEPC(
        target_size_kib=size, target_node=node, source_nodemask=nodemask
    )
    assert round_trip(device) == device


def test_guest_epc_xml_is_what_libvirt_documents():
    device = LibvirtConfigGuestSGXEPC(target_size_kib=65536, target_node=0, source_nodemask={0, 1})
    assert etree.tostring(device.format_dom()).decode() == (
        '<memory model="sgx-epc"><source><nodemask>0-1</nodemask></source>'
        '<target><size unit="KiB">65536</size><node>0</node></target></memory>'
    )


def test_equality_sees_every_field():
    a = LibvirtConfigGuestSGXEPC(target_size_kib=1024, target_node=0, source_nodemask={0})
    assert a != LibvirtConfigGuestSGXEPC(target_size_kib=2048, target_node=0, source_nodemask={0})
    assert a != LibvirtConfigGuestSGXEPC(target_size_kib=1024, target_node=1, source_nodemask={0})
    assert a != LibvirtConfigGuestSGXEPC(target_size_kib=1024, target_node=0, source_nodemask={1})


def test_guest_epc_rejects_other_memory_models():
    with pytest.raises(exception.InvalidInput, match="not 'sgx-epc'"):
        LibvirtConfigGuestSGXEPC().parse_dom(
            etree.fromstring("<memory model='nvdimm'><target><size>1</size></target></memory>")
        )


def test_sgx_epc_devices_finds_only_epc():
    xml = """<domain type='kvm'><devices>
      <memory model='nvdimm'><target><size unit='KiB'>4</size></target></memory>
      <memory model='sgx-epc'><target><size unit='MiB'>64</size><node>0</node></target></memory>
      <memory model='sgx-epc'><source><nodemask>1</nodemask></source>
        <target><size unit='KiB'>8192</size></target></memory>
    </devices></domain>"""
    devices = sgx_epc_devices(xml)
    assert [d.target_size_kib for d in devices] == [65536, 8192]
    assert devices[1].source_nodemask == {1}
