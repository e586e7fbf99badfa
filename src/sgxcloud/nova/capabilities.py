"""SGX as libvirt's ``<domainCapabilities>`` describes it, read without Nova.

The one parser of the ``<sgx>`` feature: the driver (through
:mod:`sgxcloud.nova.host` and the config objects of :mod:`sgxcloud.nova.config`)
and ``sgxcloud host check`` both use it.  It imports lxml only, so the node
check never pays for importing Nova (seconds, and eventlet's monkey patching).

Format: https://libvirt.org/formatdomaincaps.html#sgx-capabilities
"""

from __future__ import annotations

import dataclasses

from lxml import etree

from sgxcloud.nova.errors import SGXCapabilitiesError as SGXCapabilitiesError
from sgxcloud.sgx.epc import kib_to_mib

_SIZE_UNITS_IN_KIB = {
    "b": 1 / 1024,
    "bytes": 1 / 1024,
    "k": 1,
    "kib": 1,
    "m": 1024,
    "mib": 1024,
    "g": 1024 * 1024,
    "gib": 1024 * 1024,
}


def parse_size_kib(text: str | None, unit: str | None, where: str) -> int:
    """A libvirt size with its ``unit`` attribute (default KiB) in whole KiB."""
    if text is None or not text.strip():
        raise SGXCapabilitiesError(f"{where}: size is missing")
    try:
        value = int(text.strip())
    except ValueError:
        raise SGXCapabilitiesError(
            f"{where}: size {text.strip()!r} is not a whole number"
        ) from None
    factor = _SIZE_UNITS_IN_KIB.get((unit or "KiB").lower())
    if factor is None:
        raise SGXCapabilitiesError(f"{where}: unknown size unit {unit!r}")
    if value < 0:
        raise SGXCapabilitiesError(f"{where}: size {value} is negative")
    return int(value * factor)


def parse_yes_no(text: str | None, where: str) -> bool:
    if text is None or text.strip() not in ("yes", "no"):
        raise SGXCapabilitiesError(f"{where}: expected 'yes' or 'no', found {text!r}")
    return text.strip() == "yes"


@dataclasses.dataclass
class SGXSection:
    """``<section node='0' size='65536' unit='KiB'/>``: EPC on one host NUMA node."""

    node: int | None = None
    size_kib: int = 0


@dataclasses.dataclass
class SGXFeature:
    """The ``<sgx>`` element as written: ``flc``/``sgx1``/``sgx2`` are None
    when libvirt did not say; ``sections`` only from libvirt 8.10."""

    supported: bool = False
    flc: bool | None = None
    sgx1: bool | None = None
    sgx2: bool | None = None
    section_size_kib: int | None = None
    sections: list[SGXSection] = dataclasses.field(default_factory=list)


def read_section(element: etree._Element) -> SGXSection:
    node = element.get("node")
    if node is not None and not node.isdigit():
        raise SGXCapabilitiesError(f"sgx section: node {node!r} is not a NUMA node number")
    return SGXSection(
        node=int(node) if node is not None else None,
        size_kib=parse_size_kib(element.get("size"), element.get("unit"), "sgx section"),
    )


def read_sgx_feature(element: etree._Element) -> SGXFeature:
    feature = SGXFeature(supported=parse_yes_no(element.get("supported"), "sgx supported"))
    for child in element:
        if child.tag in ("flc", "sgx1", "sgx2"):
            setattr(feature, child.tag, parse_yes_no(child.text, f"sgx {child.tag}"))
        elif child.tag == "section_size":
            feature.section_size_kib = parse_size_kib(
                child.text, child.get("unit"), "sgx section_size"
            )
        elif child.tag == "sections":
            feature.sections.extend(
                read_section(section) for section in child if section.tag == "section"
            )
    return feature


@dataclasses.dataclass(frozen=True)
class SGXCapabilities:
    """The host's SGX support.  ``supported`` False means: offer nothing."""

    supported: bool
    flc: bool = False
    sgx1: bool = False
    sgx2: bool = False
    epc_total_kib: int = 0
    sections_kib: dict[int, int] = dataclasses.field(default_factory=dict)
    """EPC per host NUMA node; empty when libvirt reports no sections."""
    reason: str = ""
    """Why SGX is not supported (empty when it is)."""

    @property
    def epc_total_mb(self) -> int:
        return kib_to_mib(self.epc_total_kib)

    @classmethod
    def unsupported(cls, reason: str) -> SGXCapabilities:
        return cls(supported=False, reason=reason)


def parse_sgx_capabilities(domain_capabilities_xml: str | bytes) -> SGXCapabilities:
    """SGX support from a ``<domainCapabilities>`` document (``virsh domcapabilities``).

    Raises :class:`SGXCapabilitiesError` for XML that cannot be libvirt's.
    A document without ``<sgx>`` (libvirt < 8.x) means no SGX.
    """
    if isinstance(domain_capabilities_xml, str):
        domain_capabilities_xml = domain_capabilities_xml.encode()
    try:
        root = etree.fromstring(domain_capabilities_xml)
    except etree.XMLSyntaxError as exc:
        raise SGXCapabilitiesError(f"domain capabilities are not XML: {exc}") from None
    if root.tag != "domainCapabilities":
        raise SGXCapabilitiesError(f"expected <domainCapabilities>, found <{root.tag}>")
    element = root.find("./features/sgx")
    if element is None:
        return SGXCapabilities.unsupported("libvirt reports no <sgx> feature")
    return capabilities_from_feature(read_sgx_feature(element))


def capabilities_from_feature(feature: SGXFeature) -> SGXCapabilities:
    """What a host offers, from the feature as libvirt wrote it (an
    :class:`SGXFeature` or the driver's config object of the same shape)."""
    if not feature.supported:
        return SGXCapabilities.unsupported("libvirt reports <sgx supported='no'>")
    sections = {
        section.node if section.node is not None else 0: section.size_kib
        for section in feature.sections
    }
    total_kib = feature.section_size_kib
    if total_kib is None:
        total_kib = sum(sections.values())
    if not total_kib:
        return SGXCapabilities.unsupported(
            "libvirt reports SGX but no EPC (is PRMRR/EPC size set in firmware?)"
        )
    return SGXCapabilities(
        supported=True,
        flc=bool(feature.flc),
        # SGX1 is implied by a supported <sgx> on libvirt versions not saying.
        sgx1=feature.sgx1 is not False,
        sgx2=bool(feature.sgx2),
        epc_total_kib=total_kib,
        sections_kib=sections,
    )
