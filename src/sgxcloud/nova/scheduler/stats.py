"""A host's SGX facts as the driver published them in ``HostState.stats``.

Read straight from the stats dict: the scheduler calls these for every host
of every request, so they build nothing (see benchmarks/bench_scheduler.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from sgxcloud.nova import resources


def host_stats(host_state: object) -> Mapping[str, str]:
    return getattr(host_state, "stats", None) or {}


def has_sgx(stats: Mapping[str, str]) -> bool:
    return stats.get(resources.STAT_SGX) == "true"


def epc_free_mb(stats: Mapping[str, str]) -> int:
    """Free EPC the host last reported; 0 when absent or unreadable (fail closed)."""
    try:
        return int(stats.get(resources.STAT_EPC_FREE_MB, 0))
    except (TypeError, ValueError):
        return 0


def has_flag(stats: Mapping[str, str], key: str) -> bool:
    return stats.get(key) == "true"
