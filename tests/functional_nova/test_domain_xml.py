"""The domain XML Nova generates for an SGX server, checked by libvirt itself.

Three real libvirt components judge it: the RNG schema (``virt-xml-validate``),
the in-process test driver's domain parser (``virsh -c test:///default``) and
the qemu driver of a local libvirtd (``virsh -c qemu:///system``), which on a
host without SGX must refuse it for that reason and no other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from sgxcloud.nova.config import sgx_epc_devices
from tests.functional_nova.base import SGXServersTestBase

QEMU_WITHOUT_SGX = "sgx epc isn't supported by this QEMU binary"


def _run(*argv: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


class SGXDomainXMLTest(SGXServersTestBase):
    def setUp(self):
        super().setUp()
        missing = [tool for tool in ("virsh", "virt-xml-validate") if not shutil.which(tool)]
        if missing:
            if os.environ.get("CI"):
                self.fail(f"libvirt tools missing in CI: {missing}")
            self.skipTest(f"libvirt tools not installed: {missing}")
        self.flags(provision_key_device=os.devnull, group="sgx")  # exists here
        self.start_sgx_compute("sgx1", {0: 64, 1: 128}, flc=True, sgx2=True)
        flavor = self.create_sgx_flavor(
            96, vcpu=2, extra={"sgx:provision_key": "true", "sgx:require_sgx2": "true"}
        )
        server = self._create_server(flavor_id=flavor, networks="none")
        self.xml = self.domain_xml(server)
        directory = self.useFixture(_TempDir()).path
        self.path = os.path.join(directory, "domain.xml")
        with open(self.path, "w") as handle:
            handle.write(self.xml)

    def test_xml_has_sgx_epc_numa_and_cpu_features(self):
        (device,) = sgx_epc_devices(self.xml)
        self.assertEqual(96 * 1024, device.target_size_kib)
        self.assertEqual({1}, device.source_nodemask)  # only node 1 has 96 MiB free
        self.assertEqual(0, device.target_node)
        for feature in ("sgx", "sgx1", "sgxlc", "sgx2", "sgx-provisionkey"):
            self.assertIn(f'name="{feature}"', self.xml.replace("'", '"'))
        self.assertIn("<maxMemory", self.xml)
        self.assertIn("<numa>", self.xml)

    def test_passes_libvirt_rng_schema(self):
        result = _run("virt-xml-validate", self.path, "domain")
        self.assertEqual(0, result.returncode, result.stderr + result.stdout)

    def test_accepted_by_libvirt_domain_parser(self):
        result = _run("virsh", "-c", "test:///default", "define", self.path)
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertIn("defined from", result.stdout)

    def test_qemu_driver_refuses_only_for_missing_sgx(self):
        probe = _run("virsh", "-c", "qemu:///system", "version")
        if probe.returncode != 0:
            if os.environ.get("CI"):
                self.fail(f"libvirtd (qemu:///system) not reachable in CI: {probe.stderr}")
            self.skipTest(f"no local libvirtd: {probe.stderr.strip()}")
        # The first define after libvirtd starts probes QEMU, slow on a busy machine.
        result = _run("virsh", "-c", "qemu:///system", "define", self.path, timeout=600)
        if result.returncode == 0:  # never expected here; don't leave it behind
            _run("virsh", "-c", "qemu:///system", "undefine", self._domain_name())
            self.fail("qemu driver accepted SGX on a host without SGX")
        self.assertIn(QEMU_WITHOUT_SGX, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        self.assertEqual(2, len(errors), result.stderr)  # "Failed to define" + the reason

    def _domain_name(self) -> str:
        from lxml import etree

        return etree.fromstring(self.xml).findtext("name")


class _TempDir:
    """fixtures.TempDir without importing fixtures twice in this module's API."""

    def __new__(cls):
        import fixtures

        return fixtures.TempDir(rootdir=tempfile.gettempdir())
