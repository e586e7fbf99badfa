"""SGXFilter and SGXWeigher through Nova's own filter and weight handlers."""

from __future__ import annotations

import pytest
from nova import objects
from nova.scheduler import filters, weights

from sgxcloud.nova import resources
from sgxcloud.nova.scheduler import SGXFilter, SGXWeigher

objects.register_all()


class Host:
    """The HostState attributes the plug-ins and Nova's handlers read."""

    def __init__(self, name: str, stats: dict[str, str] | None = None):
        self.host = self.nodename = name
        self.stats = stats or {}
        self.aggregates = []

    def __repr__(self):
        return self.host


def sgx_host(name, free, flc=True, sgx2=False, pkey=True):
    return Host(
        name,
        {
            resources.STAT_SGX: "true",
            resources.STAT_EPC_FREE_MB: str(free),
            resources.STAT_EPC_TOTAL_MB: "512",
            resources.STAT_FLC: str(flc).lower(),
            resources.STAT_SGX2: str(sgx2).lower(),
            resources.STAT_PROVISION_KEY: str(pkey).lower(),
        },
    )


def spec(extra_specs):
    flavor = objects.Flavor(extra_specs=extra_specs, memory_mb=512, vcpus=1)
    return objects.RequestSpec(
        flavor=flavor, instance_uuid="1b6e5a3e-6d8f-4c9f-9a43-6c0e2c1f9a10", num_instances=1
    )


SGX64 = {"resources:CUSTOM_SGX_EPC_MB": "64"}


def passing(hosts, request_spec):
    handler = filters.HostFilterHandler()
    return [h.host for h in handler.get_filtered_objects([SGXFilter()], hosts, request_spec)]


def test_filter_passes_everything_for_ordinary_servers():
    hosts = [Host("plain"), sgx_host("sgx", 0)]
    assert passing(hosts, spec({})) == ["plain", "sgx"]


def test_filter_requires_sgx_and_free_epc():
    hosts = [Host("plain"), sgx_host("full", 32), sgx_host("roomy", 128)]
    assert passing(hosts, spec(SGX64)) == ["roomy"]


@pytest.mark.parametrize(
    ("key", "host_kwargs"),
    [
        ("sgx:require_flc", {"flc": False}),
        ("sgx:require_sgx2", {"sgx2": False}),
        ("sgx:provision_key", {"pkey": False}),
    ],
)
def test_filter_checks_each_sgx_requirement(key, host_kwargs):
    hosts = [sgx_host("lacking", 256, **host_kwargs), sgx_host("able", 256, sgx2=True)]
    assert passing(hosts, spec({**SGX64, key: "true"})) == ["able"]


def test_filter_checks_tcb_status():
    def with_tcb(name, status):
        host = sgx_host(name, 256)
        if status:
            host.stats[resources.STAT_TCB_STATUS] = status
        return host

    hosts = [
        with_tcb("current", "UpToDate"),
        with_tcb("stale", "OutOfDate"),
        with_tcb("unmeasured", "unknown"),
        with_tcb("old-driver", None),
    ]
    assert passing(hosts, spec({**SGX64, "sgx:tcb_status": "UpToDate,SWHardeningNeeded"})) == [
        "current"
    ]
    assert len(passing(hosts, spec(SGX64))) == 4


def test_filter_host_passes_agrees_with_filter_all():
    host = sgx_host("sgx", 16)
    assert not SGXFilter().host_passes(host, spec(SGX64))
    assert SGXFilter().host_passes(host, spec({}))


def test_filter_lets_rebuilds_through():
    # A rebuild stays on its host, whose free EPC already excludes the server.
    full = sgx_host("full", 0)
    rebuild = spec(SGX64)
    rebuild.scheduler_hints = {"_nova_check_type": ["rebuild"]}
    assert passing([full], rebuild) == ["full"]
    assert passing([full], spec(SGX64)) == []


def test_garbage_stats_fail_closed():
    host = Host("odd", {resources.STAT_SGX: "true", resources.STAT_EPC_FREE_MB: "many"})
    assert passing([host], spec(SGX64)) == []


def ranking(hosts, request_spec):
    handler = weights.HostWeightHandler()
    weighed = handler.get_weighed_objects([SGXWeigher()], hosts, request_spec)
    return [w.obj.host for w in weighed]


def test_weigher_puts_sgx_hosts_last_for_ordinary_servers():
    hosts = [sgx_host("sgx-a", 512), Host("plain"), sgx_host("sgx-b", 64)]
    assert ranking(hosts, spec({}))[0] == "plain"


def test_weigher_packs_by_default_and_spreads_when_asked():
    from sgxcloud.nova.scheduler.weigher import CONF

    hosts = [sgx_host("roomy", 400), sgx_host("tight", 80), sgx_host("middle", 200)]
    assert ranking(hosts, spec(SGX64)) == ["tight", "middle", "roomy"]
    CONF.set_override("placement_strategy", "spread", group="sgx")
    try:
        assert ranking(hosts, spec(SGX64)) == ["roomy", "middle", "tight"]
    finally:
        CONF.clear_override("placement_strategy", group="sgx")
