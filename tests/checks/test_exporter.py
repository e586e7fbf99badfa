"""The node exporter on recorded trees: its figures equal the node's own files."""

from __future__ import annotations

import shutil
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from click.testing import CliRunner

from sgxcloud.cli.host import host as host_cli
from sgxcloud.nova.checks import exporter
from sgxcloud.nova.checks.vm_epc import requested_epc_kib
from sgxcloud.nova.host import parse_sgx_capabilities
from tests.checks.conftest import DATA
from tests.metrics.promtool import check_metrics, samples

KIB, MIB = 1024, 1024 * 1024


@pytest.fixture
def node(tree) -> Path:
    """The ready two-NUMA host, running the two recorded QEMU VMs' domains, plus
    a stopped one (defined in /etc/libvirt/qemu only: it keeps its EPC in Placement)."""
    root = tree("sgx-host-2numa")
    shutil.copytree(DATA / "qemu-vms/root/run", root / "run")
    defined = root / "etc/libvirt/qemu"
    defined.mkdir(parents=True, exist_ok=True)
    for live in (root / "run/libvirt/qemu").glob("*.xml"):  # running ones are defined too
        shutil.copy(live, defined / live.name)
    (defined / "instance-0000002c.xml").write_text(STOPPED)
    return root


STOPPED = """<domain type='kvm'><name>instance-0000002c</name>
  <uuid>5b0e8f1c-2c2d-4d3e-9f4a-0a1b2c3d4e5f</uuid>
  <devices><memory model='sgx-epc'><source><nodemask>1</nodemask></source>
    <target><size unit='KiB'>16384</size><node>0</node></target></memory></devices>
</domain>"""


def test_node_metrics_equal_domcaps_nova_conf_and_domain_xml(node):
    payload = exporter.render([exporter.node_state_from_tree(node, "sgx1")])
    check_metrics(payload)
    got = samples(payload)
    host = (("host", "sgx1"),)

    caps = parse_sgx_capabilities((node / "var/lib/sgxcloud/domcapabilities.xml").read_text())
    # Every defined domain once, running (live XML) or stopped (persistent XML).
    domains = sorted((node / "etc/libvirt/qemu").glob("*.xml"))
    asked = {d.name: requested_epc_kib(d.read_text()) * KIB for d in domains}
    assert len(asked) == 3 and asked["instance-0000002c.xml"] == 16 * MIB
    assert got[("sgxcloud_node_epc_capacity_bytes", host)] == caps.epc_total_kib * KIB
    assert got[("sgxcloud_node_epc_reserved_bytes", host)] == 64 * MIB  # nova.conf
    assert got[("sgxcloud_node_epc_allocated_bytes", host)] == sum(asked.values())
    assert got[("sgxcloud_node_epc_free_bytes", host)] == (
        caps.epc_total_kib * KIB - 64 * MIB - sum(asked.values())
    )
    for node_id, kib in caps.sections_kib.items():
        labels = (("host", "sgx1"), ("numa_node", str(node_id)))
        assert got[("sgxcloud_numa_node_epc_capacity_bytes", labels)] == kib * KIB
    per_numa = sum(v for (n, _), v in got.items() if n == "sgxcloud_numa_node_epc_allocated_bytes")
    assert per_numa == sum(asked.values())
    per_instance = {
        dict(labels)["instance_id"]: value
        for (name, labels), value in got.items()
        if name == "sgxcloud_instance_epc_bytes"
    }
    assert sorted(per_instance.values()) == sorted(asked.values())
    assert got[("sgxcloud_node_sgx_ready", host)] == 1


def test_a_host_without_sgx_reports_not_ready_and_no_capacity(tree):
    state = exporter.node_state_from_tree(tree("sgx-disabled-in-firmware"), "h")
    payload = exporter.render([state])
    check_metrics(payload)
    got = samples(payload)
    assert got[("sgxcloud_node_sgx_ready", (("host", "h"),))] == 0
    assert got[("sgxcloud_node_epc_capacity_bytes", (("host", "h"),))] == 0
    assert got[("sgxcloud_node_check_findings", (("host", "h"), ("status", "failure")))] > 0


def test_domain_epc_reads_nova_identity_and_splits_over_nodes():
    xml = """<domain><name>instance-1</name><uuid>u-1</uuid>
      <metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
        <nova:owner><nova:project uuid="p-1">demo</nova:project></nova:owner>
      </nova:instance></metadata>
      <devices><memory model='sgx-epc'><source><nodemask>0-1</nodemask></source>
        <target><size unit='MiB'>64</size><node>0</node></target></memory></devices>
    </domain>"""
    domain = exporter.domain_epc(xml)
    assert domain == exporter.DomainEpc("u-1", "instance-1", "p-1", {0: 32 * KIB, 1: 32 * KIB})
    assert exporter.domain_epc("<domain><devices/></domain>") is None
    with pytest.raises(ValueError, match="not XML"):
        exporter.domain_epc("<domain")


def test_textfile_is_replaced_atomically_and_errors_are_one_line(node, tmp_path):
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    target = textfiles / "sgxcloud.prom"
    target.write_text("# old\n")
    result = CliRunner().invoke(host_cli, ["exporter", "--root", str(node), "--host", "sgx1",
                                           "--textfile", str(target)])  # fmt: skip
    assert result.exit_code == 0, result.output
    check_metrics(target.read_bytes())
    assert [p.name for p in textfiles.iterdir()] == ["sgxcloud.prom"]  # no temporary left
    assert oct(target.stat().st_mode & 0o777) == "0o644"

    missing = tmp_path / "no-such-dir" / "x.prom"
    result = CliRunner().invoke(host_cli, ["exporter", "--root", str(node), "--textfile",
                                           str(missing)])  # fmt: skip
    assert result.exit_code != 0
    assert "cannot write" in result.output and "Traceback" not in result.output
    assert not missing.parent.exists()


def test_http_endpoint_serves_the_same_metrics(node):
    states = exporter.CachedState(lambda: exporter.node_state_from_tree(node, "sgx1"), 60)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = make_server("127.0.0.1", 0, exporter.make_wsgi_app(states), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
            assert response.headers["Content-Type"].startswith("text/plain")
    finally:
        server.shutdown()
        server.server_close()
    check_metrics(body)
    assert samples(body)[("sgxcloud_node_sgx_ready", (("host", "sgx1"),))] == 1
