"""Prometheus metrics of an SGX compute node: EPC capacity, use, readiness.

What the node's libvirt and Nova configuration say, in the same terms
Placement uses, so the metrics and Placement agree by construction:

- capacity per NUMA node: libvirt's ``<sgx><sections>`` (parsed by the
  compute driver's own parser; the driver reports their sum to Placement);
- reserved: ``[sgx] reserved_epc_mb`` from nova.conf, capped at the capacity
  (as the driver caps it);
- allocated: the ``sgx-epc`` memory devices of every domain libvirt has here,
  running or not (as the driver counts them: a stopped server keeps its EPC
  in Placement), per instance with its Nova project;
- the host check's verdict.

:func:`node_state_from_tree` reads a node (``/`` or a recorded tree);
:func:`node_state` takes the same facts from elsewhere (the tests hand it
Nova's fake libvirt).  :func:`render` turns states into the Prometheus text
format; :func:`write_textfile` writes it for node_exporter's textfile
collector, atomically; :func:`serve` answers ``GET /metrics``.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sgxcloud.nova.checks import sysfacts
from sgxcloud.nova.checks.host import NOVA_CONF, Runner, check_host, run_command
from sgxcloud.nova.checks.model import Report, Status
from sgxcloud.nova.checks.tree import HostTree, TreeReadError
from sgxcloud.sgx.epc import KIB

DOMAIN_XML_DIR = "/run/libvirt/qemu"  # running domains (libvirt's live status XML)
DEFINED_XML_DIR = "/etc/libvirt/qemu"  # every defined domain's persistent XML
NOVA_NS = "{http://openstack.org/xmlns/libvirt/nova/1.1}"
MIB = 1024 * 1024
DEFAULT_PORT = 9842


@dataclass(frozen=True)
class DomainEpc:
    """EPC of one libvirt domain, per host NUMA node, with its Nova identity."""

    uuid: str  # Nova's instance (server) UUID
    name: str  # libvirt domain name
    project_id: str  # from Nova's <nova:owner>; "" for domains Nova did not define
    kib_by_node: dict[int, int]

    @property
    def kib(self) -> int:
        return sum(self.kib_by_node.values())


@dataclass(frozen=True)
class NodeState:
    """Everything the node's metrics say, as plain numbers."""

    host: str
    sections_kib: dict[int, int]  # EPC capacity per host NUMA node
    reserved_mb_setting: int  # [sgx] reserved_epc_mb
    domains: tuple[DomainEpc, ...] = ()
    verdict: Status | None = None  # the host check's, None when not run
    findings: dict[Status, int] = field(default_factory=dict)
    checked_at: float | None = None

    @property
    def capacity_bytes(self) -> int:
        return sum(self.sections_kib.values()) * KIB

    @property
    def reserved_bytes(self) -> int:
        # The driver never reserves more than the host has (driver._reserved_epc_mb).
        return min(self.reserved_mb_setting * MIB, self.capacity_bytes)

    @property
    def allocated_kib_by_node(self) -> dict[int, int]:
        used: dict[int, int] = defaultdict(int)
        for domain in self.domains:
            for node, kib in domain.kib_by_node.items():
                used[node] += kib
        return dict(used)

    @property
    def allocated_bytes(self) -> int:
        return sum(d.kib for d in self.domains) * KIB

    @property
    def free_bytes(self) -> int:
        # EPC is never over-committed (allocation ratio 1.0), as in Placement.
        return max(self.capacity_bytes - self.reserved_bytes - self.allocated_bytes, 0)


def domain_epc(domain_xml: str | bytes) -> DomainEpc | None:
    """The EPC a domain (or libvirt's ``<domstatus>`` file) holds; None without EPC.

    EPC bound to several host nodes is split evenly and EPC with no nodemask
    is counted on node 0 — exactly as the compute driver counts it.
    """
    try:
        root = ET.fromstring(domain_xml)  # noqa: S314 - libvirt's own output
    except ET.ParseError as exc:
        raise ValueError(f"not XML ({exc})") from None
    domain = root if root.tag == "domain" else root.find("domain")
    if domain is None:
        raise ValueError(f"no <domain> in <{root.tag}>")
    by_node: dict[int, int] = defaultdict(int)
    for memory in domain.findall("./devices/memory[@model='sgx-epc']"):
        size = memory.find("./target/size")
        if size is None:
            raise ValueError("sgx-epc memory device without <target><size>")
        kib = sysfacts.size_in_bytes(size.text or "", size.get("unit")) // KIB
        nodes = sorted(_nodemask(memory.findtext("./source/nodemask")) or {0})
        for node in nodes:
            by_node[node] += kib // len(nodes)
    if not by_node:
        return None
    project = domain.find(f"./metadata/{NOVA_NS}instance/{NOVA_NS}owner/{NOVA_NS}project")
    return DomainEpc(
        uuid=(domain.findtext("uuid") or "").strip(),
        name=(domain.findtext("name") or "").strip(),
        project_id=(project.get("uuid") or "") if project is not None else "",
        kib_by_node=dict(by_node),
    )


def _nodemask(text: str | None) -> set[int]:
    """libvirt's node set syntax: ``0``, ``0-1``, ``0,2-3``."""
    nodes: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        nodes.update(range(int(lo), int(hi or lo) + 1))
    return nodes


def node_state(
    host: str,
    sections_kib: dict[int, int],
    reserved_mb_setting: int,
    domain_xmls: Iterable[str | bytes],
    report: Report | None = None,
) -> NodeState:
    """A node's state from libvirt's answers (sections, domains) and nova.conf."""
    domains = tuple(d for d in (domain_epc(x) for x in domain_xmls) if d is not None)
    findings: dict[Status, int] = {}
    if report is not None:
        for status in Status:
            findings[status] = sum(f.status is status for f in report.findings)
    return NodeState(
        host=host,
        sections_kib=dict(sections_kib),
        reserved_mb_setting=reserved_mb_setting,
        domains=domains,
        verdict=report.verdict if report is not None else None,
        findings=findings,
        checked_at=time.time() if report is not None else None,
    )


def node_state_from_tree(
    root: str | os.PathLike[str] = "/", host: str | None = None, runner: Runner = run_command
) -> NodeState:
    """The state of the node whose files are under ``root`` (``/``: this node).

    Capacity comes from the host check's reading of libvirt's domain
    capabilities (the driver's parser), so a node the check cannot read shows
    no capacity and a not-ready verdict rather than a guess.
    """
    tree = HostTree(root)
    report = check_host(root, runner)
    caps = report.facts.get("domcaps_sgx") or {}
    sections = {s["node"]: s["size_kib"] for s in caps.get("sections") or []}
    if not sections and caps.get("supported") and caps.get("section_size_kib"):
        sections = {0: caps["section_size_kib"]}  # libvirt without per-node sections
    return node_state(
        host or _hostname(tree),
        sections,
        _reserved_epc_mb(tree),
        _domain_xmls(tree),
        report,
    )


def _hostname(tree: HostTree) -> str:
    for path in ("/etc/hostname", "/proc/sys/kernel/hostname"):
        try:
            name = tree.read_text(path).strip()
        except TreeReadError:
            continue
        if name:
            return name
    return os.uname().nodename if tree.is_live else os.path.basename(str(tree.root))


def _reserved_epc_mb(tree: HostTree) -> int:
    try:
        text = tree.read_text(NOVA_CONF)
    except TreeReadError:
        return 0
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
        return max(parser.getint("sgx", "reserved_epc_mb", fallback=0), 0)
    except (configparser.Error, ValueError):
        return 0  # the host check reports the broken file


def _domain_xmls(tree: HostTree) -> Iterator[str]:
    """Each domain once: its live XML when running, else its persistent definition."""
    live = {n for n in tree.listdir(DOMAIN_XML_DIR) if n.endswith(".xml")}
    defined = {n for n in tree.listdir(DEFINED_XML_DIR) if n.endswith(".xml")}
    for name in sorted(live | defined):
        directory = DOMAIN_XML_DIR if name in live else DEFINED_XML_DIR
        try:
            yield tree.read_text(f"{directory}/{name}")
        except TreeReadError:
            continue  # a domain that stopped or was undefined while we listed


# -- Prometheus ---------------------------------------------------------------------


class NodeCollector(Collector):
    """Metric families for a set of nodes, computed at each collection."""

    def __init__(self, states: Callable[[], Sequence[NodeState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = self._states()
        host = ["host"]
        numa = ["host", "numa_node"]
        families = {
            "capacity": GaugeMetricFamily(
                "sgxcloud_node_epc_capacity_bytes",
                "EPC the node offers (libvirt's SGX sections; Placement inventory total)",
                labels=host,
            ),
            "reserved": GaugeMetricFamily(
                "sgxcloud_node_epc_reserved_bytes",
                "EPC kept back from guests ([sgx] reserved_epc_mb; Placement reserved)",
                labels=host,
            ),
            "allocated": GaugeMetricFamily(
                "sgxcloud_node_epc_allocated_bytes",
                "EPC given to the domains on the node (Placement usage)",
                labels=host,
            ),
            "free": GaugeMetricFamily(
                "sgxcloud_node_epc_free_bytes",
                "EPC still available to new guests: capacity - reserved - allocated",
                labels=host,
            ),
            "numa_capacity": GaugeMetricFamily(
                "sgxcloud_numa_node_epc_capacity_bytes",
                "EPC of one host NUMA node (libvirt's SGX section)",
                labels=numa,
            ),
            "numa_allocated": GaugeMetricFamily(
                "sgxcloud_numa_node_epc_allocated_bytes",
                "EPC given to domains from one host NUMA node",
                labels=numa,
            ),
            "numa_free": GaugeMetricFamily(
                "sgxcloud_numa_node_epc_free_bytes",
                "EPC of one host NUMA node not given to domains (reserve is per host)",
                labels=numa,
            ),
            "instance": GaugeMetricFamily(
                "sgxcloud_instance_epc_bytes",
                "EPC held by one server (instance_id: Nova server UUID)",
                labels=["host", "instance_id", "project_id"],
            ),
            "ready": GaugeMetricFamily(
                "sgxcloud_node_sgx_ready",
                "1 when the host check finds the node ready to host SGX VMs, else 0",
                labels=host,
            ),
            "findings": GaugeMetricFamily(
                "sgxcloud_node_check_findings",
                "Findings of the last host check, by status",
                labels=["host", "status"],
            ),
            "checked": GaugeMetricFamily(
                "sgxcloud_node_check_timestamp_seconds",
                "When the host check last ran (Unix time)",
                labels=host,
            ),
        }
        for s in states:
            _add_node(families, s)
        yield from families.values()


def _add_node(families: dict[str, GaugeMetricFamily], s: NodeState) -> None:
    families["capacity"].add_metric([s.host], s.capacity_bytes)
    families["reserved"].add_metric([s.host], s.reserved_bytes)
    families["allocated"].add_metric([s.host], s.allocated_bytes)
    families["free"].add_metric([s.host], s.free_bytes)
    allocated = s.allocated_kib_by_node
    for node in sorted(set(s.sections_kib) | set(allocated)):
        capacity = s.sections_kib.get(node, 0) * KIB
        used = allocated.get(node, 0) * KIB
        labels = [s.host, str(node)]
        families["numa_capacity"].add_metric(labels, capacity)
        families["numa_allocated"].add_metric(labels, used)
        families["numa_free"].add_metric(labels, max(capacity - used, 0))
    for d in sorted(s.domains, key=lambda d: d.uuid):
        families["instance"].add_metric([s.host, d.uuid, d.project_id], d.kib * KIB)
    if s.verdict is not None:
        families["ready"].add_metric([s.host], 0 if s.verdict is Status.FAILURE else 1)
        for status, count in sorted(s.findings.items()):
            families["findings"].add_metric([s.host, status.value], count)
    if s.checked_at is not None:
        families["checked"].add_metric([s.host], s.checked_at)


def render(states: Sequence[NodeState]) -> bytes:
    """The Prometheus text exposition of ``states``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(lambda: states))
    return generate_latest(registry)


def write_textfile(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write for node_exporter's textfile collector: a temporary file, then rename.

    node_exporter reads ``*.prom`` files; the temporary name does not end in
    ``.prom`` and lives in the same directory, so a reader sees the old file
    or the new one, never half of one.
    """
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".sgxcloud-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # node_exporter runs as its own user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class CachedState:
    """Re-read the node at most every ``interval`` seconds (the check runs virsh)."""

    def __init__(self, read: Callable[[], NodeState], interval: float) -> None:
        self._read = read
        self._interval = interval
        self._state: NodeState | None = None
        self._at = 0.0

    def __call__(self) -> list[NodeState]:
        now = time.monotonic()
        if self._state is None or now - self._at >= self._interval:
            self._state, self._at = self._read(), now
        return [self._state]


def make_wsgi_app(states: Callable[[], Sequence[NodeState]]):
    """A WSGI app answering ``/metrics`` (prometheus_client's exposition app)."""
    from prometheus_client import make_wsgi_app as _make

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(states))
    return _make(registry)
