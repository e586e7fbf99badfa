"""libvirt XML for SGX, as config objects in the style of nova.virt.libvirt.config.

Each class maps one element to and from XML with symmetric ``format_dom`` and
``parse_dom`` (tested: ``parse(format(x)) == x``) and decides nothing.

Formats: https://libvirt.org/formatdomaincaps.html#sgx-capabilities and
https://libvirt.org/formatdomain.html#memory-devices (``model='sgx-epc'``).
"""

from __future__ import annotations

from typing import Any

from lxml import etree
from nova import exception
from nova.virt import hardware
from nova.virt.libvirt import config as vconfig

from sgxcloud.nova import capabilities


def _invalid(message: str) -> exception.InvalidInput:
    return exception.InvalidInput(reason=message)


def parse_size_kib(text: str | None, unit: str | None, where: str) -> int:
    """A libvirt size in whole KiB; Nova's InvalidInput when it is not one."""
    try:
        return capabilities.parse_size_kib(text, unit, where)
    except capabilities.SGXCapabilitiesError as exc:
        raise _invalid(str(exc)) from None


class _ComparableConfig(vconfig.LibvirtConfigObject):
    """Equality by the fields a class formats, so round trips can be asserted."""

    _fields: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values() == self._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())


class LibvirtConfigDomainCapsSGXSection(_ComparableConfig):
    """``<section node='0' size='65536' unit='KiB'/>``: EPC on one host NUMA node."""

    _fields = ("node", "size_kib")

    def __init__(self, node: int | None = None, size_kib: int = 0, **kwargs: Any) -> None:
        super().__init__(root_name="section", **kwargs)
        self.node = node
        self.size_kib = size_kib

    def parse_dom(self, xmldoc: etree._Element) -> None:
        super().parse_dom(xmldoc)
        try:
            section = capabilities.read_section(xmldoc)
        except capabilities.SGXCapabilitiesError as exc:
            raise _invalid(str(exc)) from None
        self.node, self.size_kib = section.node, section.size_kib

    def format_dom(self) -> etree._Element:
        section = super().format_dom()
        if self.node is not None:
            section.set("node", str(self.node))
        section.set("size", str(self.size_kib))
        section.set("unit", "KiB")
        return section


class LibvirtConfigDomainCapsFeatureSGX(_ComparableConfig):
    """The ``<sgx>`` element of ``<domainCapabilities><features>``.

    libvirt >= 8.10 reports per-NUMA ``<sections>``; earlier 8.x releases
    only ``<section_size>``.  ``flc``/``sgx1``/``sgx2`` are ``None`` when
    libvirt did not say.
    """

    _fields = ("supported", "flc", "sgx1", "sgx2", "section_size_kib", "sections")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(root_name="sgx", **kwargs)
        self.supported = False
        self.flc: bool | None = None
        self.sgx1: bool | None = None
        self.sgx2: bool | None = None
        self.section_size_kib: int | None = None
        self.sections: list[LibvirtConfigDomainCapsSGXSection] = []

    def _values(self) -> tuple[Any, ...]:
        return (*super()._values()[:-1], tuple(self.sections))

    def parse_dom(self, xmldoc: etree._Element) -> None:
        super().parse_dom(xmldoc)
        try:
            feature = capabilities.read_sgx_feature(xmldoc)
        except capabilities.SGXCapabilitiesError as exc:
            raise _invalid(str(exc)) from None
        self.supported, self.flc, self.sgx1, self.sgx2 = (
            feature.supported,
            feature.flc,
            feature.sgx1,
            feature.sgx2,
        )
        self.section_size_kib = feature.section_size_kib
        self.sections = [
            LibvirtConfigDomainCapsSGXSection(node=section.node, size_kib=section.size_kib)
            for section in feature.sections
        ]

    def format_dom(self) -> etree._Element:
        sgx = super().format_dom()
        sgx.set("supported", self.get_yes_no_str(self.supported))
        for name in ("flc", "sgx1", "sgx2"):
            value = getattr(self, name)
            if value is not None:
                sgx.append(self._text_node(name, self.get_yes_no_str(value)))
        if self.section_size_kib is not None:
            sgx.append(self._text_node("section_size", self.section_size_kib, unit="KiB"))
        if self.sections:
            sections = self._new_node("sections")
            for section in self.sections:
                sections.append(section.format_dom())
            sgx.append(sections)
        return sgx


class LibvirtConfigGuestSGXEPC(_ComparableConfig, vconfig.LibvirtConfigGuestDevice):
    """A virtual EPC section: ``<memory model='sgx-epc'>``.

    ``source_nodemask`` binds the EPC to host NUMA nodes (libvirt >= 8.10) and
    ``target_node`` places it in a guest NUMA cell.
    """

    _fields = ("target_size_kib", "target_node", "source_nodemask")

    def __init__(
        self,
        target_size_kib: int = 0,
        target_node: int | None = None,
        source_nodemask: set[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root_name="memory", **kwargs)
        self.target_size_kib = target_size_kib
        self.target_node = target_node
        self.source_nodemask = set(source_nodemask) if source_nodemask else None

    def _values(self) -> tuple[Any, ...]:
        nodemask = frozenset(self.source_nodemask) if self.source_nodemask else None
        return (self.target_size_kib, self.target_node, nodemask)

    def format_dom(self) -> etree._Element:
        memory = super().format_dom()
        memory.set("model", "sgx-epc")
        if self.source_nodemask:
            source = self._new_node("source")
            source.append(
                self._text_node("nodemask", hardware.format_cpu_spec(self.source_nodemask))
            )
            memory.append(source)
        target = self._new_node("target")
        target.append(self._text_node("size", self.target_size_kib, unit="KiB"))
        if self.target_node is not None:
            target.append(self._text_node("node", self.target_node))
        memory.append(target)
        return memory

    def parse_dom(self, xmldoc: etree._Element) -> None:
        super().parse_dom(xmldoc)
        if xmldoc.get("model") != "sgx-epc":
            raise _invalid(f"memory model {xmldoc.get('model')!r} is not 'sgx-epc'")
        for child in xmldoc:
            if child.tag == "source":
                nodemask = child.findtext("nodemask")
                if nodemask:
                    self.source_nodemask = hardware.parse_cpu_spec(nodemask)
            elif child.tag == "target":
                size = child.find("size")
                if size is None:
                    raise _invalid("sgx-epc target has no size")
                self.target_size_kib = parse_size_kib(size.text, size.get("unit"), "sgx-epc size")
                node = child.findtext("node")
                if node is not None:
                    self.target_node = int(node)


def sgx_epc_devices(domain_xml: str) -> list[LibvirtConfigGuestSGXEPC]:
    """The ``sgx-epc`` memory devices of a domain (Nova's guest parser skips them)."""
    root = etree.fromstring(domain_xml.encode() if isinstance(domain_xml, str) else domain_xml)
    devices = []
    for element in root.iterfind("./devices/memory[@model='sgx-epc']"):
        device = LibvirtConfigGuestSGXEPC()
        device.parse_dom(element)
        devices.append(device)
    return devices
