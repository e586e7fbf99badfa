"""Nova's own in-process cloud (real API, conductor, scheduler, Placement;
libvirt faked the way Nova's functional tests fake it) with SGX compute hosts.

``SGXServersTestBase`` is a testtools class, run by stestr as Nova's are;
``InProcessCloud`` runs the same harness outside a test runner (the demo).
"""

from __future__ import annotations

# First, before any other Nova or oslo module is imported: importing Nova's
# functional-test package applies eventlet's monkey patching (each release in
# its own way), as it does first thing for Nova's own functional tests.
# Modules imported before it keep the real ``threading.local``: oslo.db's
# per-context transaction state and oslo.context's request store then become
# one per OS thread, shared by every green thread of the in-process services.
# A compute's heartbeat and its resource claims use one context (the
# service's admin context), so a claim joined the heartbeat's transaction and
# failed ("Can't upgrade a READER transaction to a WRITER mid-transaction"):
# the build was rescheduled, or ended in ERROR on a host that was the only
# candidate (tests/functional_nova/test_harness.py).
import nova.tests.functional  # noqa: F401

# isort: split
import logging
import os
import sys
import time
from pathlib import Path
from typing import ClassVar

import fixtures
from lxml import etree
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.libvirt import base
from oslo_utils import versionutils

from sgxcloud.nova import resources
from sgxcloud.nova.api import paste
from sgxcloud.nova.testing.fakes import sgx_features_xml

SGX_LIBVIRT_VERSION = versionutils.convert_version_to_int((9, 0, 0))
SGX_QEMU_VERSION = versionutils.convert_version_to_int((7, 2, 0))


def installed_api_paste_ini() -> Path:
    """Nova's api-paste.ini as the nova wheel installs it under <venv>/etc/nova."""
    return Path(sys.prefix) / "etc" / "nova" / "api-paste.ini"


def api_paste_with_sgx_guard(directory: str) -> str:
    """Nova's api-paste.ini with our ``sgx_guard`` filter, as an operator edits it."""
    text = paste.with_sgx_guard(installed_api_paste_ini().read_text())
    path = os.path.join(directory, "api-paste.ini")
    with open(path, "w") as handle:
        handle.write(text)
    return path


class _FakeLibvirtKeepsEPC(fixtures.Fixture):
    """Teach Nova's fake libvirt to keep ``sgx-epc`` memory devices.

    The fake re-renders a domain's XML from the few fields it understands and
    drops memory devices; real libvirt keeps them.  The driver counts EPC in
    use from the domains' XML, so the fake must keep them too.  The XML Nova
    defined is kept as ``domain.defined_xml`` for tests that validate it.
    """

    def _setUp(self):
        original_init = fakelibvirt.Domain.__init__
        original_xml_desc = fakelibvirt.Domain.XMLDesc

        def init(domain, connection, xml, *args, **kwargs):
            original_init(domain, connection, xml, *args, **kwargs)
            domain.defined_xml = xml

        def xml_desc(domain, flags):
            rendered = original_xml_desc(domain, flags)
            epc = etree.fromstring(domain.defined_xml).findall("./devices/memory[@model='sgx-epc']")
            if not epc:
                return rendered
            tree = etree.fromstring(rendered)
            devices = tree.find("./devices")
            for element in epc:
                devices.append(element)
            return etree.tostring(tree, encoding="unicode")

        self.useFixture(fixtures.MonkeyPatch("nova.tests.fixtures.libvirt.Domain.__init__", init))
        self.useFixture(
            fixtures.MonkeyPatch("nova.tests.fixtures.libvirt.Domain.XMLDesc", xml_desc)
        )


class SGXServersTestBase(base.ServersTestBase):
    """Computes run ``sgxcloud.SGXLibvirtDriver``; the scheduler runs
    ``SGXFilter`` and ``SGXWeigher``.

    ``start_sgx_compute(name, {node: epc_mb})`` starts an SGX host;
    ``start_compute(name)`` an ordinary one.
    """

    microversion = "latest"
    ADMIN_API = True  # operators pick hosts and migrate; tests do both
    ADDITIONAL_FILTERS: ClassVar[list[str]] = ["SGXFilter"]

    def setUp(self):
        # hostname -> <features> XML reported by that host's fake libvirt
        self.host_features: dict[str, str] = {}
        paste_dir = self.useFixture(fixtures.TempDir()).path
        self.flags(api_paste_config=api_paste_with_sgx_guard(paste_dir), group="wsgi")
        self.flags(
            available_filters=[
                "nova.scheduler.filters.all_filters",
                "sgxcloud.nova.scheduler.SGXFilter",
            ],
            weight_classes=[
                "nova.scheduler.weights.all_weighers",
                "sgxcloud.nova.scheduler.SGXWeigher",
            ],
            group="filter_scheduler",
        )
        super().setUp()
        self.useFixture(_FakeLibvirtKeepsEPC())
        # No real disk images exist; Nova's own vPMEM tests stub the same call
        # so that cold migration and resize reach the guest-config code.
        self.useFixture(
            fixtures.MockPatch(
                "nova.virt.libvirt.LibvirtDriver._get_instance_disk_info", return_value=[]
            )
        )
        self.flags(cpu_mode="host-model", group="libvirt")

    def _setup_compute_service(self):
        # Computes start per test (start_*compute) with their own capabilities.
        self.flags(compute_driver="sgxcloud.SGXLibvirtDriver")

    def _get_connection(
        self,
        host_info=None,
        pci_info=None,
        mdev_info=None,
        vdpa_info=None,
        libvirt_version=None,
        qemu_version=None,
        hostname=None,
    ):
        connection = super()._get_connection(
            host_info,
            pci_info,
            mdev_info,
            vdpa_info,
            libvirt_version or SGX_LIBVIRT_VERSION,
            qemu_version or SGX_QEMU_VERSION,
            hostname,
        )
        features = self.host_features.get(hostname)
        if features is not None:
            # An instance attribute shadows fakelibvirt's class-wide default.
            connection._domain_capability_features = features
        return connection

    def start_sgx_compute(
        self,
        hostname: str,
        sections_mb: dict[int, int],
        *,
        flc: bool = True,
        sgx2: bool = False,
        **kwargs,
    ) -> str:
        self.host_features[hostname] = sgx_features_xml(sections_mb, flc=flc, sgx2=sgx2)
        return self.start_compute(hostname, **kwargs)

    def set_host_features(self, hostname: str, features_xml: str) -> None:
        """Change what an already started host's libvirt reports (seen on restart)."""
        self.host_features[hostname] = features_xml
        connection = self.computes[hostname].driver._host.get_connection()
        connection._domain_capability_features = features_xml

    # -- flavors and Placement views ----------------------------------------

    def create_sgx_flavor(
        self,
        epc_mb: int,
        *,
        memory_mb: int = 512,
        vcpu: int = 1,
        extra: dict[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        specs = {
            f"resources:{resources.EPC_RESOURCE_CLASS}": str(epc_mb),
            f"trait:{resources.TRAIT_SGX}": "required",
            **(extra or {}),
        }
        return self._create_flavor(
            memory_mb=memory_mb,
            vcpu=vcpu,
            disk=1,
            extra_spec=specs,
            name=name or f"sgx-{epc_mb}-{len(self.host_features)}-{os.urandom(2).hex()}",
        )

    def rp_uuid(self, hostname: str) -> str:
        return self.compute_rp_uuids[hostname]

    def epc_inventory(self, hostname: str) -> dict | None:
        inventories = self.placement.get(
            f"/resource_providers/{self.rp_uuid(hostname)}/inventories", version="1.26"
        ).body["inventories"]
        return inventories.get(resources.EPC_RESOURCE_CLASS)

    def epc_usage(self, hostname: str) -> int:
        usages = self.placement.get(f"/resource_providers/{self.rp_uuid(hostname)}/usages").body[
            "usages"
        ]
        return usages.get(resources.EPC_RESOURCE_CLASS, 0)

    def traits(self, hostname: str) -> set[str]:
        return set(
            self.placement.get(
                f"/resource_providers/{self.rp_uuid(hostname)}/traits", version="1.6"
            ).body["traits"]
        )

    def epc_allocation(self, server_id: str) -> dict[str, int]:
        """Hostname -> EPC MiB allocated to a server (consumer)."""
        allocations = self.placement.get(f"/allocations/{server_id}").body["allocations"]
        by_uuid = {uuid: name for name, uuid in self.compute_rp_uuids.items()}
        return {
            by_uuid.get(rp, rp): alloc["resources"][resources.EPC_RESOURCE_CLASS]
            for rp, alloc in allocations.items()
            if resources.EPC_RESOURCE_CLASS in alloc["resources"]
        }

    def domain_xml(self, server: dict) -> str:
        """The domain XML Nova defined in libvirt for ``server``."""
        hostname = server["OS-EXT-SRV-ATTR:host"]
        connection = self.computes[hostname].driver._host.get_connection()
        return connection.lookupByUUIDString(server["id"]).defined_xml

    def wait_for_any_status(self, server: dict, statuses: set[str], attempts: int = 100) -> dict:
        for _ in range(attempts):
            server = self.api.get_server(server["id"])
            if server["status"] in statuses:
                return server
            time.sleep(0.1)
        self.fail(f"server {server['id']} stayed {server['status']}, not in {statuses}")


class _CloudCase(SGXServersTestBase):
    # [DEFAULT] options set just before the services start (some, such as
    # service_down_time, are read only then).
    start_flags: ClassVar[dict[str, object]] = {}

    def _setup_services(self):
        for name, value in self.start_flags.items():
            self.flags(**{name: value})
        super()._setup_services()

    def runTest(self):
        """Never run as a test: InProcessCloud drives setUp/cleanups itself."""


class InProcessCloud:
    """The harness as a context manager: ``with InProcessCloud() as cloud:``.

    ``cloud`` offers the same helpers as the tests (``start_sgx_compute``,
    ``create_sgx_flavor``, ``epc_usage``...) plus the API and Placement
    fixtures.  Everything is torn down on exit.
    """

    def __init__(self, **flags: object) -> None:
        """``flags``: [DEFAULT] options to set before the services start."""
        self._flags = flags

    def __enter__(self) -> SGXServersTestBase:
        self._case = type("_Cloud", (_CloudCase,), {"start_flags": self._flags})()
        self._case.setUp()
        return self._case

    def __exit__(self, *exc_info) -> None:
        # Nova's services log their shutdown after the harness stopped
        # capturing logs; callers that print afterwards reset logging
        # themselves (the demo does), since oslo.log configured it on import.
        logging.disable(logging.INFO)
        try:
            self._case.doCleanups()
        finally:
            logging.disable(logging.NOTSET)


__all__ = ["InProcessCloud", "SGXServersTestBase", "fakelibvirt"]
