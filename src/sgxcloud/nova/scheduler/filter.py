"""``SGXFilter``: hosts that can run the SGX server asked for.

Placement already guarantees EPC capacity (``CUSTOM_SGX_EPC_MB``) and is the
authority; this filter checks what Placement cannot express as resources —
launch control, SGX2, the provisioning key, the platform's TCB status — and
uses the host's last reported free EPC as a cheap pre-check.
"""

from __future__ import annotations

from collections.abc import Iterable

from nova.scheduler import filters
from nova.scheduler import utils as scheduler_utils
from oslo_log import log as logging

from sgxcloud.nova import resources
from sgxcloud.nova.requirements import SGXRequest, sgx_request_from_flavor
from sgxcloud.nova.scheduler.stats import epc_free_mb, has_flag, has_sgx, host_stats

LOG = logging.getLogger(__name__)

# flavor requirement -> the host stat that must be "true"
_FEATURE_STATS = (
    ("require_flc", resources.STAT_FLC, "no flexible launch control"),
    ("require_sgx2", resources.STAT_SGX2, "no SGX2"),
    ("provision_key", resources.STAT_PROVISION_KEY, "no provisioning key device"),
)


class SGXFilter(filters.BaseHostFilter):
    # A rebuild keeps the server where it is, with the EPC it already holds;
    # its own EPC would make a full host look unable to take it.
    RUN_ON_REBUILD = False

    def filter_all(self, filter_obj_list: Iterable, spec_obj) -> Iterable:
        # Overriding filter_all skips BaseHostFilter._filter_one, which is
        # where Nova honours RUN_ON_REBUILD: honour it here.
        if scheduler_utils.request_is_rebuild(spec_obj):
            return filter_obj_list
        # Work out once per request what each host must show; the per-host
        # part is only dictionary lookups (benchmarks/bench_scheduler.py).
        request = sgx_request_from_flavor(spec_obj.flavor)
        if not request.wants_sgx:
            return filter_obj_list
        checks = _HostChecks(request)
        return [host for host in filter_obj_list if checks.passes(host)]

    def host_passes(self, host_state, spec_obj) -> bool:
        request = sgx_request_from_flavor(spec_obj.flavor)
        return not request.wants_sgx or _HostChecks(request).passes(host_state)


class _HostChecks:
    """One SGX request's requirements, checked against hosts' stats."""

    def __init__(self, request: SGXRequest) -> None:
        self.epc_mb = request.epc_mb
        self.flags = [
            (stat, why) for wanted, stat, why in _FEATURE_STATS if getattr(request, wanted)
        ]
        self.tcb = request.accepted_tcb_statuses

    def passes(self, host_state) -> bool:
        stats = host_stats(host_state)
        reason = None
        if not has_sgx(stats):
            reason = "no SGX"
        elif (free := epc_free_mb(stats)) < self.epc_mb:
            reason = f"{free} MiB EPC free, {self.epc_mb} MiB asked"
        elif self.tcb and stats.get(resources.STAT_TCB_STATUS) not in self.tcb:
            reason = f"TCB status {stats.get(resources.STAT_TCB_STATUS, 'unknown')} not accepted"
        else:
            reason = next((why for stat, why in self.flags if not has_flag(stats, stat)), None)
        if reason:
            LOG.debug("%s fails SGX requirements: %s", host_state, reason)
            return False
        return True
