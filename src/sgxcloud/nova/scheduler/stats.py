"""A host's SGX facts as the driver published them in ``HostState.stats``."""

from __future__ import annotations

import dataclasses

from sgxcloud.nova import resources


@dataclasses.dataclass(frozen=True)
class HostSGXStats:
    sgx: bool
    epc_free_mb: int
    flc: bool
    sgx2: bool
    provision_key: bool


NO_SGX = HostSGXStats(sgx=False, epc_free_mb=0, flc=False, sgx2=False, provision_key=False)


def host_sgx_stats(host_state: object) -> HostSGXStats:
    stats = getattr(host_state, "stats", None) or {}
    if stats.get(resources.STAT_SGX) != "true":
        return NO_SGX
    try:
        free = int(stats.get(resources.STAT_EPC_FREE_MB, 0))
    except (TypeError, ValueError):
        free = 0
    return HostSGXStats(
        sgx=True,
        epc_free_mb=free,
        flc=stats.get(resources.STAT_FLC) == "true",
        sgx2=stats.get(resources.STAT_SGX2) == "true",
        provision_key=stats.get(resources.STAT_PROVISION_KEY) == "true",
    )
