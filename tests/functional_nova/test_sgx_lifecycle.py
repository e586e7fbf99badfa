"""What happens to SGX servers and their EPC through Nova's lifecycle operations."""

from __future__ import annotations

import fixtures
from nova import context as nova_context
from nova import exception, objects
from nova.tests.functional.api import client

from sgxcloud.nova import resources
from sgxcloud.nova.config import sgx_epc_devices
from sgxcloud.nova.testing.fakes import sgx_features_xml
from tests.functional_nova.base import SGXServersTestBase


class SGXLifecycleTest(SGXServersTestBase):
    def setUp(self):
        super().setUp()
        # Instance directories aren't real; Nova's own resize tests stub this too.
        self.useFixture(fixtures.MockPatch("os.rename"))
        self.start_sgx_compute("sgx1", {0: 128, 1: 128})
        self.start_sgx_compute("sgx2", {0: 256})
        self.small = self.create_sgx_flavor(64)
        self.large = self.create_sgx_flavor(128)

    def _boot(self, flavor=None, host=None):
        server = self._create_server(flavor_id=flavor or self.small, networks="none", host=host)
        return server

    def _epc_kib_in_xml(self, server) -> list[int]:
        return [d.target_size_kib for d in sgx_epc_devices(self.domain_xml(server))]

    def test_delete_frees_epc(self):
        server = self._boot(host="sgx1")
        self.assertEqual(64, self.epc_usage("sgx1"))
        self._delete_server(server)
        self._wait_until_deleted(server)
        self.assertEqual(0, self.epc_usage("sgx1"))

    def test_free_epc_stat_follows_guests(self):
        self._boot(host="sgx2")
        stats = self.computes["sgx2"].driver.get_available_resource("sgx2")["stats"]
        self.assertEqual("192", stats[resources.STAT_EPC_FREE_MB])

    def test_resize_to_larger_epc_moves_allocation(self):
        server = self._boot(host="sgx1")
        self.assertEqual({"sgx1": 64}, self.epc_allocation(server["id"]))
        server = self._resize_server(server, self.large)
        server = self._confirm_resize(server)
        host = server["OS-EXT-SRV-ATTR:host"]
        self.assertEqual({host: 128}, self.epc_allocation(server["id"]))
        self.assertEqual([128 * 1024], self._epc_kib_in_xml(server))
        other = "sgx2" if host == "sgx1" else "sgx1"
        self.assertEqual(0, self.epc_usage(other))
        self.assertEqual(128, self.epc_usage(host))

    def test_revert_resize_restores_allocation(self):
        server = self._boot(host="sgx1")
        server = self._resize_server(server, self.large)
        server = self._revert_resize(server)
        self.assertEqual({"sgx1": 64}, self.epc_allocation(server["id"]))
        self.assertEqual(0, self.epc_usage("sgx2"))

    def test_cold_migration_moves_epc(self):
        server = self._boot(host="sgx1")
        server = self._migrate_server(server, host="sgx2")
        server = self._confirm_resize(server)
        self.assertEqual("sgx2", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual({"sgx2": 64}, self.epc_allocation(server["id"]))
        self.assertEqual(0, self.epc_usage("sgx1"))
        self.assertEqual([64 * 1024], self._epc_kib_in_xml(server))

    def test_live_migration_refused_with_clear_error(self):
        server = self._boot(host="sgx1")
        ex = self.assertRaises(
            client.OpenStackApiException,
            self.admin_api.post_server_action,
            server["id"],
            {"os-migrateLive": {"host": None, "block_migration": "auto"}},
        )
        self.assertEqual(409, ex.response.status_code)
        self.assertIn("Live migration is not supported for SGX servers", ex.response.text)
        self.assertEqual({"sgx1": 64}, self.epc_allocation(server["id"]))

    def test_suspend_refused_with_clear_error(self):
        server = self._boot(host="sgx1")
        ex = self.assertRaises(
            client.OpenStackApiException, self.api.post_server_action, server["id"], {"suspend": {}}
        )
        self.assertEqual(409, ex.response.status_code)
        self.assertIn("Suspend is not supported for SGX servers", ex.response.text)
        self.assertEqual("ACTIVE", self.api.get_server(server["id"])["status"])

    def test_driver_refuses_live_migration_even_past_the_api(self):
        server = self._boot(host="sgx1")
        context = nova_context.get_admin_context()
        instance = objects.Instance.get_by_uuid(context, server["id"])
        driver = self.computes["sgx1"].driver
        self.assertRaises(
            exception.MigrationPreCheckError,
            driver.check_can_live_migrate_source,
            context,
            instance,
            None,
        )
        self.assertRaises(exception.Invalid, driver.suspend, context, instance)

    def test_ordinary_servers_are_not_refused(self):
        self.start_compute("plain1")
        flavor = self._create_flavor(memory_mb=512, vcpu=1, disk=1)
        server = self._create_server(flavor_id=flavor, networks="none", host="plain1")
        server = self._suspend_server(server)
        self.assertEqual("SUSPENDED", server["status"])

    def test_evacuate_keeps_epc_allocation_right(self):
        server = self._boot(host="sgx1")
        self.computes["sgx1"].stop()
        self.admin_api.put_service_force_down(
            self.admin_api.get_services(host="sgx1", binary="nova-compute")[0]["id"], True
        )
        # Since API 2.95 an evacuated server arrives stopped.
        server = self._evacuate_server(server, expected_host="sgx2", expected_state="SHUTOFF")
        # Nova keeps the source allocation until the source host comes back.
        self.assertEqual({"sgx1": 64, "sgx2": 64}, self.epc_allocation(server["id"]))
        self.assertEqual([64 * 1024], self._epc_kib_in_xml(server))
        self.restart_compute_service("sgx1")
        self.admin_api.put_service_force_down(
            self.admin_api.get_services(host="sgx1", binary="nova-compute")[0]["id"], False
        )
        self.assertEqual({"sgx2": 64}, self.epc_allocation(server["id"]))
        self.assertEqual(0, self.epc_usage("sgx1"))

    def test_rebuild_keeps_epc(self):
        server = self._boot(host="sgx2")
        image = self.glance.auto_disk_config_enabled_image["id"]
        server = self._rebuild_server(server, image)
        self.assertEqual({"sgx2": 64}, self.epc_allocation(server["id"]))
        self.assertEqual([64 * 1024], self._epc_kib_in_xml(server))

    def test_rebuild_to_new_image_on_a_full_host(self):
        # The server's own EPC fills the host; a rebuild to a new image must
        # still work.  (Nova 34 forces such rebuilds onto their host; that
        # SGXFilter honours RUN_ON_REBUILD is tested in tests/nova/test_scheduler.py.)
        self.start_sgx_compute("full", {0: 64})
        server = self._boot(host="full")
        self.assertEqual(0, self.epc_inventory("full")["total"] - self.epc_usage("full"))
        image = self.glance.auto_disk_config_enabled_image["id"]
        server = self._rebuild_server(server, image)
        self.assertEqual(image, server["image"]["id"])
        self.assertEqual({"full": 64}, self.epc_allocation(server["id"]))

    def test_shelve_offload_frees_and_unshelve_reclaims_epc(self):
        server = self._boot(host="sgx2")
        self._shelve_server(server)  # offloaded at once (shelved_offload_time 0)
        self.assertEqual({}, self.epc_allocation(server["id"]))
        self.assertEqual(0, self.epc_usage("sgx2"))
        server = self._unshelve_server(server)
        host = server["OS-EXT-SRV-ATTR:host"]
        self.assertEqual({host: 64}, self.epc_allocation(server["id"]))
        self.assertEqual([64 * 1024], self._epc_kib_in_xml(server))

    def test_hard_reboot_regenerates_epc(self):
        server = self._boot(host="sgx1")
        server = self._reboot_server(server, hard=True)
        self.assertEqual([64 * 1024], self._epc_kib_in_xml(server))
        self.assertEqual({"sgx1": 64}, self.epc_allocation(server["id"]))

    def test_restart_with_sgx_lost_is_refused(self):
        self._boot(host="sgx1")
        self.set_host_features("sgx1", sgx_features_xml(None, supported=False))
        ex = self.assertRaises(exception.InvalidConfiguration, self.restart_compute_service, "sgx1")
        self.assertIn("SGX is no longer available", str(ex))
        self.assertIn("sgx supported='no'", str(ex))

    def test_recovery_after_sgx_lost_by_evacuation(self):
        server = self._boot(host="sgx1")
        self.set_host_features("sgx1", sgx_features_xml(None, supported=False))
        self.assertRaises(exception.InvalidConfiguration, self.restart_compute_service, "sgx1")
        # What the refusal tells the operator to do: mark down, evacuate, restart.
        service = self.admin_api.get_services(host="sgx1", binary="nova-compute")[0]
        self.admin_api.put_service_force_down(service["id"], True)
        server = self._evacuate_server(server, expected_host="sgx2", expected_state="SHUTOFF")
        self.start_compute("sgx1")
        self.admin_api.put_service_force_down(service["id"], False)
        self.assertEqual({"sgx2": 64}, self.epc_allocation(server["id"]))
        self.assertIsNone(self.epc_inventory("sgx1"))

    def test_restart_without_sgx_servers_drops_inventory(self):
        self.set_host_features("sgx2", sgx_features_xml(None, supported=False))
        self.restart_compute_service("sgx2")
        self.assertIsNone(self.epc_inventory("sgx2"))
        self.assertNotIn(resources.TRAIT_SGX, self.traits("sgx2"))
