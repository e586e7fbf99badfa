"""What this compute host can give SGX guests, as libvirt and QEMU report it.

Read-only: nothing here changes the host.  The answer feeds Placement
inventory and traits, the scheduler's host stats and guest XML.
"""

from __future__ import annotations

import os
from functools import cached_property

from nova.virt.libvirt import host as libvirt_host
from oslo_log import log as logging

from sgxcloud.nova import compat
from sgxcloud.nova.capabilities import (
    SGXCapabilities,
    SGXCapabilitiesError,
    capabilities_from_feature,
    parse_sgx_capabilities,
)

LOG = logging.getLogger(__name__)


class SGXHost:
    """SGX facts about one libvirt host, probed once per service start."""

    def __init__(self, host: libvirt_host.Host, virt_type: str, provision_key_device: str) -> None:
        self._host = host
        self._virt_type = virt_type
        self._provision_key_device = provision_key_device

    @cached_property
    def capabilities(self) -> SGXCapabilities:
        """SGX as this host may offer it to guests; each give-up reason logged."""
        if self._virt_type != "kvm":
            return self._give_up(f"virt_type is {self._virt_type!r}; SGX guests need 'kvm'")
        if not self._host.has_min_version(lv_ver=compat.MIN_LIBVIRT):
            return self._give_up(f"libvirt older than {compat.dotted(compat.MIN_LIBVIRT)}")
        if not self._host.has_min_version(hv_ver=compat.MIN_QEMU):
            return self._give_up(f"QEMU older than {compat.dotted(compat.MIN_QEMU)}")
        try:
            xml = self._host.get_connection().getDomainCapabilities(
                None, "x86_64", None, self._virt_type, 0
            )
        except Exception as exc:  # libvirtError, or no x86_64 emulator at all
            return self._give_up(f"libvirt domain capabilities unavailable: {exc}")
        try:
            capabilities = parse_sgx_capabilities(xml)
        except SGXCapabilitiesError as exc:
            return self._give_up(str(exc))
        if not capabilities.supported:
            return self._give_up(capabilities.reason)
        LOG.info(
            "SGX detected: %d MiB EPC, FLC %s, SGX2 %s, sections %s",
            capabilities.epc_total_mb,
            capabilities.flc,
            capabilities.sgx2,
            capabilities.sections_kib or "not reported",
        )
        return capabilities

    @cached_property
    def provision_key(self) -> bool:
        """Whether guests can be given the provisioning key (DCAP quoting)."""
        return self.capabilities.supported and os.path.exists(self._provision_key_device)

    @staticmethod
    def _give_up(reason: str) -> SGXCapabilities:
        LOG.info("SGX not offered on this host: %s", reason)
        return SGXCapabilities.unsupported(reason)


__all__ = [
    "SGXCapabilities",
    "SGXCapabilitiesError",
    "SGXHost",
    "capabilities_from_feature",
    "parse_sgx_capabilities",
]
