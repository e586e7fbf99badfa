"""What a flavor asks of SGX: EPC size and the ``sgx:`` extra specs.

One reading of the flavor, shared by the driver, the scheduler filter and
weigher, so they can never disagree about what a server needs.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping

from oslo_utils import strutils

from sgxcloud.nova.resources import EPC_RESOURCE_CLASS

SPEC_PROVISION_KEY = "sgx:provision_key"
SPEC_REQUIRE_FLC = "sgx:require_flc"
SPEC_REQUIRE_SGX2 = "sgx:require_sgx2"
SPEC_TCB_STATUS = "sgx:tcb_status"

RESOURCES_PREFIX = "resources"

# Nova's own pattern (nova.scheduler.utils.ResourceRequest.XS_KEYPAT, the same
# in every supported release); used only where Nova is not installed.
_NOVA_XS_KEYPAT = re.compile(r"^(resources|trait)([a-zA-Z0-9_-]{1,64})?:(.*)$")


@functools.cache
def _flavor_key_pattern() -> re.Pattern[str]:
    """How Nova splits ``resources[GROUP]:CLASS`` / ``trait[GROUP]:NAME`` flavor keys.

    Taken from Nova itself where it is installed (compute, scheduler, API), so
    a key counts as EPC exactly when Nova's scheduler asks Placement for it:
    a key Nova ignores (a group suffix over 64 characters, a character
    outside ``[a-zA-Z0-9_-]``) must give no EPC, or a guest would get EPC that
    Placement never allocated.  Admin workstations (usage reports) have no
    Nova and use the same pattern.
    """
    try:
        from nova.scheduler.utils import ResourceRequest
    except ImportError:
        return _NOVA_XS_KEYPAT
    return ResourceRequest.XS_KEYPAT


def _nova_amount(value: object) -> int:
    """A resource amount as Nova's ``RequestGroup.add_resource`` reads it: a
    non-negative integer, anything else ignored (0)."""
    try:
        amount = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0
    return amount if amount >= 0 else 0


def epc_mb_from_extra_specs(extra_specs: Mapping[str, str]) -> int:
    """The EPC MiB Placement allocates for these flavor keys (all groups added up,
    as Nova's ``ResourceRequest.merged_resources`` does)."""
    pattern = _flavor_key_pattern()
    total = 0
    for key, value in extra_specs.items():
        match = pattern.match(key)
        if match is None:
            continue
        prefix, _group, name = match.groups()
        if prefix == RESOURCES_PREFIX and name == EPC_RESOURCE_CLASS:
            total += _nova_amount(value)
    return total


EPC_CANNOT_MOVE = (
    "{action} is not supported for SGX servers: QEMU cannot save or migrate "
    "enclave page cache. Use cold migration (resize/migrate) instead."
)
"""Why SGX servers refuse live migration and suspend (API and driver alike)."""


@dataclasses.dataclass(frozen=True)
class SGXRequest:
    epc_mb: int = 0
    provision_key: bool = False
    require_flc: bool = False
    require_sgx2: bool = False
    accepted_tcb_statuses: frozenset[str] = frozenset()
    """Empty: any host; otherwise the host's ``[sgx] tcb_status`` must be one of these."""

    @property
    def wants_sgx(self) -> bool:
        return self.epc_mb > 0


NO_SGX = SGXRequest()


def sgx_request_from_extra_specs(extra_specs: Mapping[str, str] | None) -> SGXRequest:
    """Read a flavor's extra specs.  Values were validated when the flavor was
    created (``sgxcloud.nova.extra_specs``); anything unreadable counts as absent.
    """
    if not extra_specs:
        return NO_SGX
    epc_mb = epc_mb_from_extra_specs(extra_specs)
    if not epc_mb:
        return NO_SGX
    return SGXRequest(
        epc_mb=epc_mb,
        provision_key=_flag(extra_specs, SPEC_PROVISION_KEY),
        require_flc=_flag(extra_specs, SPEC_REQUIRE_FLC),
        require_sgx2=_flag(extra_specs, SPEC_REQUIRE_SGX2),
        accepted_tcb_statuses=frozenset(
            status.strip()
            for status in extra_specs.get(SPEC_TCB_STATUS, "").split(",")
            if status.strip()
        ),
    )


def sgx_request_from_flavor(flavor: object) -> SGXRequest:
    return sgx_request_from_extra_specs(getattr(flavor, "extra_specs", None))


def _flag(extra_specs: Mapping[str, str], key: str) -> bool:
    return strutils.bool_from_string(extra_specs.get(key, "false"), default=False)
