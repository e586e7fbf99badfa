"""What this compute host can give SGX guests, as libvirt and QEMU report it.

Read-only: nothing here changes the host.  The answer feeds Placement
inventory and traits, the scheduler's host stats and guest XML.
"""

from __future__ import annotations

import dataclasses
import os
from functools import cached_property

from lxml import etree
from nova import exception
from nova.virt.libvirt import host as libvirt_host
from oslo_log import log as logging

from sgxcloud.errors import InputError
from sgxcloud.nova import compat
from sgxcloud.nova import config as sgx_config
from sgxcloud.sgx.epc import kib_to_mib

LOG = logging.getLogger(__name__)


class SGXCapabilitiesError(InputError):
    """Domain capabilities XML that is not what libvirt writes."""


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
    feature = sgx_config.LibvirtConfigDomainCapsFeatureSGX()
    try:
        feature.parse_dom(element)
    except exception.InvalidInput as exc:
        raise SGXCapabilitiesError(str(exc.kwargs.get("reason", exc))) from None
    return capabilities_from_feature(feature)


def capabilities_from_feature(
    feature: sgx_config.LibvirtConfigDomainCapsFeatureSGX,
) -> SGXCapabilities:
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
            "libvirt reports SGX but no EPC (is PRMRR/EPC size set in firmware?)")
    return SGXCapabilities(
        supported=True,
        flc=bool(feature.flc),
        # SGX1 is implied by a supported <sgx> on libvirt versions not saying.
        sgx1=feature.sgx1 is not False,
        sgx2=bool(feature.sgx2),
        epc_total_kib=total_kib,
        sections_kib=sections,
    )


class SGXHost:
    """SGX facts about one libvirt host, probed once per service start."""

    def __init__(self, host: libvirt_host.Host, virt_type: str,
                 provision_key_device: str) -> None:
        self._host = host
        self._virt_type = virt_type
        self._provision_key_device = provision_key_device

    @cached_property
    def capabilities(self) -> SGXCapabilities:
        """SGX as this host may offer it to guests; each give-up reason logged."""
        if self._virt_type != "kvm":
            return self._give_up(f"virt_type is {self._virt_type!r}; SGX guests need 'kvm'")
        if not self._host.has_min_version(lv_ver=compat.MIN_LIBVIRT):
            return self._give_up(f"libvirt older than {_dotted(compat.MIN_LIBVIRT)}")
        if not self._host.has_min_version(hv_ver=compat.MIN_QEMU):
            return self._give_up(f"QEMU older than {_dotted(compat.MIN_QEMU)}")
        try:
            xml = self._host.get_connection().getDomainCapabilities(
                None, "x86_64", None, self._virt_type, 0)
        except Exception as exc:  # libvirtError, or no x86_64 emulator at all
            return self._give_up(f"libvirt domain capabilities unavailable: {exc}")
        try:
            capabilities = parse_sgx_capabilities(xml)
        except SGXCapabilitiesError as exc:
            return self._give_up(str(exc))
        if not capabilities.supported:
            return self._give_up(capabilities.reason)
        LOG.info("SGX detected: %d MiB EPC, FLC %s, SGX2 %s, sections %s",
                 capabilities.epc_total_mb, capabilities.flc, capabilities.sgx2,
                 capabilities.sections_kib or "not reported")
        return capabilities

    @cached_property
    def provision_key(self) -> bool:
        """Whether guests can be given the provisioning key (DCAP quoting)."""
        return self.capabilities.supported and os.path.exists(self._provision_key_device)

    @staticmethod
    def _give_up(reason: str) -> SGXCapabilities:
        LOG.info("SGX not offered on this host: %s", reason)
        return SGXCapabilities.unsupported(reason)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)
