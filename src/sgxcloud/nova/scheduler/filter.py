"""``SGXFilter``: hosts that can run the SGX server asked for.

Placement already guarantees EPC capacity (``CUSTOM_SGX_EPC_MB``) and is the
authority; this filter checks what Placement cannot express as resources —
launch control, SGX2, the provisioning key — and uses the host's last
reported free EPC as a cheap pre-check.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from nova.scheduler import filters
from oslo_log import log as logging

from sgxcloud.nova.requirements import SGXRequest, sgx_request_from_flavor
from sgxcloud.nova.scheduler.stats import host_sgx_stats

LOG = logging.getLogger(__name__)


class SGXFilter(filters.BaseHostFilter):

    RUN_ON_REBUILD = False

    def filter_all(self, filter_obj_list: Iterable, spec_obj) -> Iterator:
        # Read the flavor once per request, not once per host.
        request = sgx_request_from_flavor(spec_obj.flavor)
        if not request.wants_sgx:
            yield from filter_obj_list
            return
        for host_state in filter_obj_list:
            if self._passes(host_state, request):
                yield host_state

    def host_passes(self, host_state, spec_obj) -> bool:
        request = sgx_request_from_flavor(spec_obj.flavor)
        return not request.wants_sgx or self._passes(host_state, request)

    @staticmethod
    def _passes(host_state, request: SGXRequest) -> bool:
        stats = host_sgx_stats(host_state)
        reason = None
        if not stats.sgx:
            reason = "no SGX"
        elif stats.epc_free_mb < request.epc_mb:
            reason = f"{stats.epc_free_mb} MiB EPC free, {request.epc_mb} MiB asked"
        elif request.require_flc and not stats.flc:
            reason = "no flexible launch control"
        elif request.require_sgx2 and not stats.sgx2:
            reason = "no SGX2"
        elif request.provision_key and not stats.provision_key:
            reason = "no provisioning key device"
        if reason:
            LOG.debug("%s fails SGX requirements: %s", host_state, reason)
            return False
        return True
