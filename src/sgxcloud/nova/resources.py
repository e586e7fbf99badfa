"""Names SGX hosts are known by in Placement and in the scheduler's host stats."""

from __future__ import annotations

import os_traits

EPC_RESOURCE_CLASS = "CUSTOM_SGX_EPC_MB"
"""Placement resource class: one unit is one MiB of enclave page cache."""

TRAIT_SGX = os_traits.HW_CPU_X86_SGX
TRAIT_SGX_FLC = "CUSTOM_SGX_FLC"
"""Flexible launch control: the guest may run its own launch policy (needed by DCAP)."""
TRAIT_SGX2 = "CUSTOM_SGX2"
"""SGX2 (EDMM): enclaves may add and remove pages after initialisation."""

SGX_TRAITS = (TRAIT_SGX, TRAIT_SGX_FLC, TRAIT_SGX2)

# Keys the driver publishes in get_available_resource()['stats']; the resource
# tracker copies them into ComputeNode.stats and the scheduler reads them from
# HostState.stats.  Values are strings there, as for every compute node stat.
STAT_SGX = "sgx"
STAT_EPC_TOTAL_MB = "sgx_epc_total_mb"
STAT_EPC_RESERVED_MB = "sgx_epc_reserved_mb"
STAT_EPC_FREE_MB = "sgx_epc_free_mb"
STAT_FLC = "sgx_flc"
STAT_SGX2 = "sgx2"
STAT_PROVISION_KEY = "sgx_provision_key"
STAT_TCB_STATUS = "sgx_tcb_status"
