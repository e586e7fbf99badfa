"""EPC quota through Nova's unified limits (``class:CUSTOM_SGX_EPC_MB``)."""

from __future__ import annotations

from nova.limit import local as local_limit
from nova.tests.functional.api import client
from oslo_limit import fixture as limit_fixture

from tests.functional_nova.base import SGXServersTestBase


class SGXQuotaTest(SGXServersTestBase):
    def setUp(self):
        super().setUp()
        self.flags(driver="nova.quota.UnifiedLimitsDriver", group="quota")
        registered = {
            local_limit.SERVER_METADATA_ITEMS: 128,
            local_limit.INJECTED_FILES: 5,
            local_limit.INJECTED_FILES_CONTENT: 10 * 1024,
            local_limit.INJECTED_FILES_PATH: 255,
            local_limit.KEY_PAIRS: 100,
            local_limit.SERVER_GROUPS: 10,
            local_limit.SERVER_GROUP_MEMBERS: 1,
            "servers": 10,
            "class:VCPU": 20,
            "class:MEMORY_MB": 32768,
            "class:DISK_GB": 250,
            "class:CUSTOM_SGX_EPC_MB": 256,
        }
        project = {self.api.project_id: {"class:CUSTOM_SGX_EPC_MB": 96}}
        self.useFixture(limit_fixture.LimitFixture(registered, project))
        self.start_sgx_compute("sgx1", {0: 512})
        self.flavor = self.create_sgx_flavor(64)

    def test_epc_beyond_project_limit_is_refused_by_quota(self):
        self._create_server(flavor_id=self.flavor, networks="none")
        ex = self.assertRaises(
            client.OpenStackApiException,
            self.api.post_server,
            {"server": self._build_server(flavor_id=self.flavor, networks="none")},
        )
        self.assertEqual(403, ex.response.status_code)
        self.assertIn("CUSTOM_SGX_EPC_MB", ex.response.text)
        self.assertEqual(64, self.epc_usage("sgx1"))

    def test_resize_beyond_project_limit_is_refused_by_quota(self):
        server = self._create_server(flavor_id=self.flavor, networks="none")
        bigger = self.create_sgx_flavor(128)
        ex = self.assertRaises(
            client.OpenStackApiException,
            self.api.post_server_action,
            server["id"],
            {"resize": {"flavorRef": bigger}},
        )
        self.assertEqual(403, ex.response.status_code)
        self.assertIn("CUSTOM_SGX_EPC_MB", ex.response.text)
