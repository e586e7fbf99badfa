"""EPC a guest gets is exactly what Placement allocated, and never more than a host has.

Issue 9, finding 7: the flavor key ``resources_<65 characters>:CUSTOM_SGX_EPC_MB``
matched sgxcloud's pattern but not Nova's, so Placement never allocated it
while the driver gave the guest EPC (a 128 MiB host gave its guests 192 MiB).
Flavor keys are now read with Nova's own pattern, and the driver refuses a
guest whose EPC the host cannot hold, whatever Placement believed.
"""

from __future__ import annotations

import uuid

from sgxcloud.nova import resources
from sgxcloud.nova.config import sgx_epc_devices
from tests.functional_nova.base import SGXServersTestBase

EPC = resources.EPC_RESOURCE_CLASS


class SGXEPCAccountingTest(SGXServersTestBase):
    def epc_given_kib(self, hostname: str) -> int:
        """EPC in the domains libvirt holds on ``hostname`` (what guests really get)."""
        host = self.computes[hostname].driver._host
        return sum(
            device.target_size_kib
            for guest in host.list_guests(only_running=False)
            for device in sgx_epc_devices(guest.get_xml_desc())
        )

    def test_a_key_nova_ignores_gives_no_epc(self):
        self.start_sgx_compute("sgx1", {0: 128})
        full = self.create_sgx_flavor(128)
        first = self._create_server(flavor_id=full, networks="none")
        self.assertEqual({"sgx1": 128}, self.epc_allocation(first["id"]))
        # 65 characters of group suffix ("_" and 64 more): Nova's pattern allows
        # 1 to 64, so its scheduler asks Placement for no EPC for this key.
        ignored = f"resources_{'a' * 64}:{EPC}"
        flavor = self._create_flavor(
            memory_mb=512,
            vcpu=1,
            disk=1,
            name="sneaky",
            extra_spec={ignored: "64", f"trait:{resources.TRAIT_SGX}": "required"},
        )
        second = self._create_server(flavor_id=flavor, networks="none")
        self.assertEqual("sgx1", second["OS-EXT-SRV-ATTR:host"])
        self.assertEqual({}, self.epc_allocation(second["id"]))
        self.assertEqual([], sgx_epc_devices(self.domain_xml(second)))
        self.assertEqual(128 * 1024, self.epc_given_kib("sgx1"))

    def test_keys_nova_reads_still_give_epc(self):
        self.start_sgx_compute("sgx1", {0: 128})
        grouped = f"resources_{'a' * 63}:{EPC}"  # a 64-character suffix
        flavor = self._create_flavor(
            memory_mb=512,
            vcpu=1,
            disk=1,
            name="grouped",
            extra_spec={
                grouped: "32",
                f"resources1:{EPC}": "16",
                "group_policy": "none",
                f"trait:{resources.TRAIT_SGX}": "required",
            },
        )
        server = self._create_server(flavor_id=flavor, networks="none")
        self.assertEqual({"sgx1": 48}, self.epc_allocation(server["id"]))
        self.assertEqual(48 * 1024, self.epc_given_kib("sgx1"))

    def test_driver_refuses_a_guest_the_free_epc_cannot_hold(self):
        self.start_sgx_compute("sgx1", {0: 128})
        # A guest Nova does not know holds 96 MiB EPC on the host (defined by
        # hand, or left by an older deployment): Placement still shows 128 free.
        connection = self.computes["sgx1"].driver._host.get_connection()
        connection.defineXML(_domain_with_epc(96 * 1024))
        self.assertEqual(96 * 1024, self.epc_given_kib("sgx1"))
        flavor = self.create_sgx_flavor(64)
        server = self._create_server(flavor_id=flavor, networks="none", expected_state="ERROR")
        self.assertEqual(96 * 1024, self.epc_given_kib("sgx1"))  # nothing over-committed
        self.assertEqual(0, self.epc_usage("sgx1"))  # the claim was given back
        events = self.api.api_get(f"/servers/{server['id']}/os-instance-actions").body[
            "instanceActions"
        ]
        self.assertTrue(events)
        log = self.stdlog.logger.output
        self.assertIn("needs 64 MiB EPC but this host has only 32 MiB free", log)


def _domain_with_epc(size_kib: int) -> str:
    return f"""<domain type='kvm'>
  <name>outside-nova</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='KiB'>524288</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <memory model='sgx-epc'>
      <target><size unit='KiB'>{size_kib}</size><node>0</node></target>
    </memory>
  </devices>
</domain>"""
