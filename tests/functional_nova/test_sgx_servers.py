"""SGX servers end to end on Nova's in-process cloud."""

from __future__ import annotations

from nova.tests.functional.api import client

from sgxcloud.nova import resources
from sgxcloud.nova.config import sgx_epc_devices
from tests.functional_nova.base import SGXServersTestBase


class SGXInventoryTest(SGXServersTestBase):
    def test_sgx_host_reports_epc_inventory_and_traits(self):
        self.flags(reserved_epc_mb=16, group="sgx")
        self.start_sgx_compute("sgx1", {0: 64, 1: 64}, flc=True, sgx2=True)
        inventory = self.epc_inventory("sgx1")
        self.assertEqual(128, inventory["total"])
        self.assertEqual(16, inventory["reserved"])
        self.assertEqual(1.0, inventory["allocation_ratio"])
        self.assertEqual(112, inventory["max_unit"])
        self.assertEqual(1, inventory["step_size"])
        self.assertLessEqual(
            {resources.TRAIT_SGX, resources.TRAIT_SGX_FLC, resources.TRAIT_SGX2},
            self.traits("sgx1"),
        )

    def test_only_true_traits_are_reported(self):
        self.start_sgx_compute("sgx1", {0: 64}, flc=False, sgx2=False)
        traits = self.traits("sgx1")
        self.assertIn(resources.TRAIT_SGX, traits)
        self.assertNotIn(resources.TRAIT_SGX_FLC, traits)
        self.assertNotIn(resources.TRAIT_SGX2, traits)

    def test_host_without_sgx_reports_nothing(self):
        self.start_compute("plain1")
        self.assertIsNone(self.epc_inventory("plain1"))
        self.assertFalse(set(resources.SGX_TRAITS) & self.traits("plain1"))

    def test_old_libvirt_or_qemu_means_no_sgx(self):
        from oslo_utils import versionutils

        old_libvirt = versionutils.convert_version_to_int((8, 9, 0))
        old_qemu = versionutils.convert_version_to_int((6, 2, 0))
        self.start_sgx_compute("old-libvirt", {0: 64}, libvirt_version=old_libvirt)
        self.start_sgx_compute("old-qemu", {0: 64}, qemu_version=old_qemu)
        for host in ("old-libvirt", "old-qemu"):
            self.assertIsNone(self.epc_inventory(host))
            self.assertNotIn(resources.TRAIT_SGX, self.traits(host))

    def test_step_and_max_unit_follow_config(self):
        self.flags(epc_step_mb=8, max_epc_per_instance_mb=100, group="sgx")
        self.start_sgx_compute("sgx1", {0: 256})
        inventory = self.epc_inventory("sgx1")
        self.assertEqual(8, inventory["step_size"])
        self.assertEqual(8, inventory["min_unit"])
        self.assertEqual(96, inventory["max_unit"])  # 100 rounded down to the step

    def test_driver_publishes_scheduler_stats(self):
        self.start_sgx_compute("sgx1", {0: 64, 1: 64}, flc=True, sgx2=False)
        stats = self.computes["sgx1"].driver.get_available_resource("sgx1")["stats"]
        self.assertEqual("true", stats[resources.STAT_SGX])
        self.assertEqual("128", stats[resources.STAT_EPC_TOTAL_MB])
        self.assertEqual("128", stats[resources.STAT_EPC_FREE_MB])
        self.assertEqual("true", stats[resources.STAT_FLC])
        self.assertEqual("false", stats[resources.STAT_SGX2])
        self.assertIn(stats[resources.STAT_PROVISION_KEY], ("true", "false"))


class SGXSchedulingTest(SGXServersTestBase):
    def test_sgx_server_lands_only_where_epc_fits(self):
        self.start_sgx_compute("small", {0: 64})
        self.start_sgx_compute("large", {0: 128, 1: 128})
        self.start_compute("plain")
        flavor = self.create_sgx_flavor(128)
        server = self._create_server(flavor_id=flavor, networks="none")
        self.assertEqual("large", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual({"large": 128}, self.epc_allocation(server["id"]))
        devices = sgx_epc_devices(self.domain_xml(server))
        self.assertEqual([128 * 1024], [d.target_size_kib for d in devices])
        self.assertEqual(1, len(devices[0].source_nodemask))

    def test_no_host_with_enough_epc_is_no_valid_host(self):
        self.start_sgx_compute("small", {0: 64})
        self.start_compute("plain")
        flavor = self.create_sgx_flavor(512)
        server = self._create_server(flavor_id=flavor, networks="none", expected_state="ERROR")
        self.assertIn("No valid host", server["fault"]["message"])
        self.assertEqual(0, self.epc_usage("small"))

    def test_concurrent_boots_never_overallocate_epc(self):
        self.start_sgx_compute("sgx1", {0: 128})
        self.start_sgx_compute("sgx2", {0: 64})
        flavor = self.create_sgx_flavor(64)
        requests = [
            self.api.post_server({"server": self._build_server(flavor_id=flavor, networks="none")})
            for _ in range(5)
        ]
        finals = [self.wait_for_any_status(s, {"ACTIVE", "ERROR"}) for s in requests]
        statuses = sorted(s["status"] for s in finals)
        self.assertEqual(["ACTIVE"] * 3 + ["ERROR"] * 2, statuses)
        for host in ("sgx1", "sgx2"):
            inventory = self.epc_inventory(host)
            self.assertLessEqual(self.epc_usage(host), inventory["total"] - inventory["reserved"])
        self.assertEqual(128, self.epc_usage("sgx1"))
        self.assertEqual(64, self.epc_usage("sgx2"))

    def test_ordinary_servers_avoid_sgx_hosts_while_others_have_room(self):
        self.flags(cpu_allocation_ratio=1.0)
        self.start_sgx_compute("sgx1", {0: 256})
        self.start_compute("plain1")
        # The fake hosts have 16 CPUs: four of these fill one.
        flavor = self._create_flavor(memory_mb=512, vcpu=4, disk=1)
        hosts = [
            self._create_server(flavor_id=flavor, networks="none")["OS-EXT-SRV-ATTR:host"]
            for _ in range(4)
        ]
        self.assertEqual(["plain1"] * 4, hosts)
        # plain1 is full now: the next ordinary server may use the SGX host.
        overflow = self._create_server(flavor_id=flavor, networks="none")
        self.assertEqual("sgx1", overflow["OS-EXT-SRV-ATTR:host"])

    def test_pack_and_spread(self):
        self.start_sgx_compute("roomy", {0: 256})
        self.start_sgx_compute("tight", {0: 128})
        flavor = self.create_sgx_flavor(32)
        packed = self._create_server(flavor_id=flavor, networks="none")
        self.assertEqual("tight", packed["OS-EXT-SRV-ATTR:host"])
        self.flags(placement_strategy="spread", group="sgx")
        spread = self._create_server(flavor_id=flavor, networks="none")
        self.assertEqual("roomy", spread["OS-EXT-SRV-ATTR:host"])

    def test_tcb_status_requirement_filters_hosts(self):
        self.flags(tcb_status="OutOfDate", group="sgx")
        self.start_sgx_compute("stale", {0: 256})
        self.flags(tcb_status="UpToDate", group="sgx")
        self.start_sgx_compute("current", {0: 64})
        flavor = self.create_sgx_flavor(32, extra={"sgx:tcb_status": "UpToDate"})
        for _ in range(2):  # pack would pick "current" anyway: fill it first
            server = self._create_server(flavor_id=flavor, networks="none")
            self.assertEqual("current", server["OS-EXT-SRV-ATTR:host"])
        self._create_server(flavor_id=flavor, networks="none", expected_state="ERROR")

    def test_sgx2_and_flc_requirements_filter_hosts(self):
        self.start_sgx_compute("sgx1-only", {0: 256}, flc=False, sgx2=False)
        flavor = self.create_sgx_flavor(32, extra={"sgx:require_sgx2": "true"})
        self._create_server(flavor_id=flavor, networks="none", expected_state="ERROR")
        self.start_sgx_compute("sgx2-host", {0: 64}, flc=True, sgx2=True)
        server = self._create_server(flavor_id=flavor, networks="none")
        self.assertEqual("sgx2-host", server["OS-EXT-SRV-ATTR:host"])
        flc_flavor = self.create_sgx_flavor(16, extra={"sgx:require_flc": "yes"})
        server = self._create_server(flavor_id=flc_flavor, networks="none")
        self.assertEqual("sgx2-host", server["OS-EXT-SRV-ATTR:host"])


class SGXFlavorKeysTest(SGXServersTestBase):
    def _extra_specs(self, specs):
        flavor = self._create_flavor(memory_mb=512, vcpu=1, disk=1)
        self.admin_api.post_extra_spec(flavor, {"extra_specs": specs})
        return self.admin_api.get_flavor(flavor)

    def test_valid_keys_accepted(self):
        body = self._extra_specs(
            {
                "resources:CUSTOM_SGX_EPC_MB": "64",
                "trait:HW_CPU_X86_SGX": "required",
                "sgx:provision_key": "true",
                "sgx:require_flc": "false",
                "sgx:require_sgx2": "no",
            }
        )
        self.assertEqual("true", body["extra_specs"]["sgx:provision_key"])
        self.assertEqual("64", body["extra_specs"]["resources:CUSTOM_SGX_EPC_MB"])

    def test_bad_value_rejected_at_flavor_creation(self):
        ex = self.assertRaises(
            client.OpenStackApiException, self._extra_specs, {"sgx:provision_key": "maybe"}
        )
        self.assertEqual(400, ex.response.status_code)
        self.assertIn("not a valid boolean-like value", ex.response.text)

    def test_tcb_status_values_validated(self):
        self._extra_specs({"sgx:tcb_status": "UpToDate,SWHardeningNeeded"})
        for bad in ("Revoked", "uptodate", "UpToDate,", "UpToDate;OutOfDate"):
            ex = self.assertRaises(
                client.OpenStackApiException, self._extra_specs, {"sgx:tcb_status": bad}
            )
            self.assertEqual(400, ex.response.status_code)

    def test_unknown_sgx_key_rejected(self):
        ex = self.assertRaises(
            client.OpenStackApiException, self._extra_specs, {"sgx:provisionkey": "true"}
        )
        self.assertEqual(400, ex.response.status_code)
        self.assertIn("does not appear to be a valid extra spec", ex.response.text)
