"""Node metrics on Nova's harness: they equal the domain XML and Placement.

Two SGX servers run on a two-NUMA host with ``[sgx] reserved_epc_mb`` set;
the exporter is given what this node's libvirt (the fake) says — domain
capabilities and the domain XML Nova defined — and its metrics must equal
Placement's inventory and usage for the node, and each server's EPC and
project as Nova knows them.
"""

from __future__ import annotations

from lxml import etree
from nova.virt.libvirt.config import NOVA_NS
from prometheus_client.parser import text_string_to_metric_families

from sgxcloud.nova.checks import exporter
from sgxcloud.nova.host import parse_sgx_capabilities
from tests.functional_nova.base import SGXServersTestBase

MIB = 1024 * 1024


def samples(payload: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(payload.decode())
        for s in family.samples
    }


class NodeMetricsTest(SGXServersTestBase):
    def test_node_metrics_equal_placement_and_domain_xml(self):
        self.flags(reserved_epc_mb=32, group="sgx")
        self.start_sgx_compute("sgx1", {0: 256, 1: 256})
        servers = [
            self._create_server(name=name, flavor_id=self.create_sgx_flavor(mb), networks="none")
            for name, mb in (("small", 64), ("large", 128))
        ]
        connection = self.computes["sgx1"].driver._host.get_connection()
        domcaps = connection.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
        caps = parse_sgx_capabilities(domcaps)
        xmls = [connection.lookupByUUIDString(s["id"]).defined_xml for s in servers]
        state = exporter.node_state("sgx1", caps.sections_kib, 32, xmls)
        got = samples(exporter.render([state]))
        host = (("host", "sgx1"),)

        inventory = self.epc_inventory("sgx1")
        self.assertEqual(inventory["total"] * MIB, got[("sgxcloud_node_epc_capacity_bytes", host)])
        self.assertEqual(
            inventory["reserved"] * MIB, got[("sgxcloud_node_epc_reserved_bytes", host)]
        )
        self.assertEqual(
            self.epc_usage("sgx1") * MIB, got[("sgxcloud_node_epc_allocated_bytes", host)]
        )
        self.assertEqual(
            (inventory["total"] - inventory["reserved"] - self.epc_usage("sgx1")) * MIB,
            got[("sgxcloud_node_epc_free_bytes", host)],
        )
        numa_total = sum(
            v for (n, _), v in got.items() if n == "sgxcloud_numa_node_epc_capacity_bytes"
        )
        self.assertEqual(inventory["total"] * MIB, numa_total)
        for server, xml in zip(servers, xmls, strict=True):
            placement_mb = self.epc_allocation(server["id"])
            # Nova writes <nova:owner><nova:project uuid=...> only when the request
            # context has a project name, which the harness (no Keystone) lacks.
            owner = etree.fromstring(xml.encode()).find(
                "./metadata/nova:instance/nova:owner/nova:project", {"nova": NOVA_NS}
            )
            project = owner.get("uuid") if owner is not None else ""
            labels = (("host", "sgx1"), ("instance_id", server["id"]), ("project_id", project))
            self.assertEqual(
                sum(placement_mb.values()) * MIB, got[("sgxcloud_instance_epc_bytes", labels)]
            )
        self.assertEqual(
            {s["id"] for s in servers},
            {dict(k[1])["instance_id"] for k in got if k[0] == "sgxcloud_instance_epc_bytes"},
        )
