"""Scheduler plug-ins for SGX hosts.

nova.conf on the scheduler::

    [filter_scheduler]
    available_filters = nova.scheduler.filters.all_filters
    available_filters = sgxcloud.nova.scheduler.SGXFilter
    enabled_filters = ...,SGXFilter
    weight_classes = nova.scheduler.weights.all_weighers,sgxcloud.nova.scheduler.SGXWeigher
"""

from sgxcloud.nova.scheduler.filter import SGXFilter
from sgxcloud.nova.scheduler.weigher import SGXWeigher

__all__ = ["SGXFilter", "SGXWeigher"]
