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

_SIZE_UNITS_IN_KIB = {
    "b": 1 / 1024, "bytes": 1 / 1024,
    "k": 1, "kib": 1,
    "m": 1024, "mib": 1024,
    "g": 1024 * 1024, "gib": 1024 * 1024,
}


def _invalid(message: str) -> exception.InvalidInput:
    return exception.InvalidInput(reason=message)


def parse_size_kib(text: str | None, unit: str | None, where: str) -> int:
    """A libvirt size with its ``unit`` attribute (default KiB) in whole KiB."""
    if text is None or not text.strip():
        raise _invalid(f"{where}: size is missing")
    try:
        value = int(text.strip())
    except ValueError:
        raise _invalid(f"{where}: size {text.strip()!r} is not a whole number") from None
    factor = _SIZE_UNITS_IN_KIB.get((unit or "KiB").lower())
    if factor is None:
        raise _invalid(f"{where}: unknown size unit {unit!r}")
    if value < 0:
        raise _invalid(f"{where}: size {value} is negative")
    return int(value * factor)


def parse_yes_no(text: str | None, where: str) -> bool:
    if text is None or text.strip() not in ("yes", "no"):
        raise _invalid(f"{where}: expected 'yes' or 'no', found {text!r}")
    return text.strip() == "yes"


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
        node = xmldoc.get("node")
        if node is not None:
            if not node.isdigit():
                raise _invalid(f"sgx section: node {node!r} is not a NUMA node number")
            self.node = int(node)
        self.size_kib = parse_size_kib(xmldoc.get("size"), xmldoc.get("unit"), "sgx section")

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
        self.supported = parse_yes_no(xmldoc.get("supported"), "sgx supported")
        for child in xmldoc:
            if child.tag in ("flc", "sgx1", "sgx2"):
                setattr(self, child.tag, parse_yes_no(child.text, f"sgx {child.tag}"))
            elif child.tag == "section_size":
                self.section_size_kib = parse_size_kib(
                    child.text, child.get("unit"), "sgx section_size")
            elif child.tag == "sections":
                for element in child:
                    if element.tag != "section":
                        continue
                    section = LibvirtConfigDomainCapsSGXSection()
                    section.parse_dom(element)
                    self.sections.append(section)

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
            source.append(self._text_node(
                "nodemask", hardware.format_cpu_spec(self.source_nodemask)))
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
