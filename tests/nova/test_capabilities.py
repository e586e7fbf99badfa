"""The libvirt ``<sgx>`` domain-capabilities parser on real-looking documents."""

from __future__ import annotations

import pytest

from sgxcloud.errors import InputError
from sgxcloud.nova.host import SGXCapabilities, SGXCapabilitiesError, parse_sgx_capabilities
from tests.fixtures.domcaps import DATA

DOMCAPS = DATA / "domcapabilities"


def parse(name: str) -> SGXCapabilities:
    return parse_sgx_capabilities((DOMCAPS / name).read_text())


def test_real_libvirt_on_host_without_sgx():
    caps = parse("libvirt9-qemu7.2-no-sgx-host.xml")
    assert not caps.supported
    assert "supported='no'" in caps.reason
    assert caps.epc_total_mb == 0


def test_two_socket_host_with_flc():
    caps = parse("icelake-2socket-flc-64g.xml")
    assert caps.supported and caps.flc and caps.sgx1 and not caps.sgx2
    assert caps.epc_total_mb == 64 * 1024
    assert caps.sections_kib == {0: 32 * 1024 * 1024, 1: 32 * 1024 * 1024}


def test_single_node_sgx2():
    caps = parse("sapphirerapids-1node-sgx2.xml")
    assert caps.supported and caps.sgx2 and caps.flc
    assert caps.epc_total_mb == 512
    assert caps.sections_kib == {0: 512 * 1024}


def test_libvirt_8_0_without_sections_still_parses():
    caps = parse("coffeelake-libvirt8.0-no-sections.xml")
    assert caps.supported and not caps.flc
    assert caps.epc_total_mb == 92
    assert caps.sections_kib == {}


def test_sections_without_total_are_summed_and_units_honoured():
    caps = parse("uneven-sections-mib-unit.xml")
    assert caps.epc_total_mb == 256
    assert caps.sections_kib == {0: 64 * 1024, 1: 192 * 1024}


def test_zero_epc_is_not_sgx():
    caps = parse("zero-epc.xml")
    assert not caps.supported
    assert "no EPC" in caps.reason


def test_libvirt_without_sgx_element_is_not_sgx():
    caps = parse("libvirt7-no-sgx-element.xml")
    assert not caps.supported
    assert "no <sgx>" in caps.reason


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad-size.xml", "not a whole number"),
        ("bad-flag.xml", "expected 'yes' or 'no'"),
        ("bad-supported.xml", "expected 'yes' or 'no'"),
        ("truncated.xml", "not XML"),
    ],
)
def test_malformed_documents_raise_one_clear_error(name, message):
    with pytest.raises(SGXCapabilitiesError, match=message) as caught:
        parse(name)
    assert isinstance(caught.value, InputError)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<capabilities/>",
        "<domainCapabilities><features><sgx/></features></domainCapabilities>",
        "<domainCapabilities><features><sgx supported='yes'><section_size unit='parsecs'>1"
        "</section_size></sgx></features></domainCapabilities>",
        "<domainCapabilities><features><sgx supported='yes'><sections><section node='x' "
        "size='1'/></sections></sgx></features></domainCapabilities>",
        "<domainCapabilities><features><sgx supported='yes'><section_size>-5</section_size>"
        "</sgx></features></domainCapabilities>",
    ],
)
def test_other_bad_input(text):
    with pytest.raises(SGXCapabilitiesError):
        parse_sgx_capabilities(text)
