"""``SGXWeigher``: keep ordinary servers off scarce SGX hosts; pack or
spread SGX servers by ``[sgx] placement_strategy``."""

from __future__ import annotations

import nova.conf
from nova.scheduler import utils, weights

from sgxcloud.nova import conf as sgx_conf
from sgxcloud.nova.requirements import sgx_request_from_flavor
from sgxcloud.nova.scheduler.stats import epc_free_mb, has_sgx, host_stats

CONF = nova.conf.CONF
sgx_conf.register_opts(CONF)


class SGXWeigher(weights.BaseHostWeigher):
    def __init__(self) -> None:
        self._multiplier = CONF.sgx.weight_multiplier

    def weight_multiplier(self, host_state) -> float:
        # Nova asks once per host after weigh_objects; only hosts in
        # aggregates can override the configured value.
        if not getattr(host_state, "aggregates", None):
            return self._multiplier
        return utils.get_weight_multiplier(host_state, "sgx_weight_multiplier", self._multiplier)

    def weigh_objects(self, weighed_obj_list, weight_properties) -> list[float]:
        self._multiplier = CONF.sgx.weight_multiplier  # once per request
        request = sgx_request_from_flavor(weight_properties.flavor)
        if not request.wants_sgx:
            # Ordinary server: every SGX host is a worse choice than any other.
            return [
                -1.0 if has_sgx(host_stats(weighed.obj)) else 0.0 for weighed in weighed_obj_list
            ]
        sign = 1.0 if CONF.sgx.placement_strategy == "spread" else -1.0
        return [sign * epc_free_mb(host_stats(weighed.obj)) for weighed in weighed_obj_list]

    def _weigh_object(self, host_state, weight_properties) -> float:
        return self.weigh_objects([weights.WeighedObject(host_state, 0.0)], weight_properties)[0]
