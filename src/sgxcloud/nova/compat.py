"""The one place that knows versions: what sgxcloud needs under it, and where
the OpenStack releases it supports differ.

Everything else asks this module a question ("does this Nova hand the driver
its instances at start-up?") instead of comparing versions itself.  Nova is
imported lazily, inside the functions that need it, so that ``sgxcloud host
check`` (which reads only the minima) runs where Nova is not installed.

Differences between the supported releases (docs/nova/releases.md):

- Nova 34 (2026.2) calls ``ComputeDriver.process_instances_at_startup`` with
  the host's instances; Nova 29-33 have no such hook, so the driver looks the
  instances up itself at the end of ``init_host`` to refuse a start with SGX
  servers on a host that lost SGX.  Same refusal, same message, same moment
  (before the resource tracker reports to Placement).
- Nova's functional harness keeps the Placement fixture as
  ``placement_fixture`` from Nova 33; Nova 29 and 31 keep it only behind the
  API client (``placement.fixture``).  Tests and the demo ask
  :func:`placement_endpoint`.
"""

from __future__ import annotations

import dataclasses
from importlib import metadata
from typing import Any

from sgxcloud.nova.errors import UnsupportedRelease as UnsupportedRelease

# -- what the host stack must have (sgxcloud host check, SGXHost) ----------

MIN_KERNEL = (5, 13)  # first with /dev/sgx_vepc (virtual EPC for KVM)
# libvirt 8.10 added per-NUMA EPC <sections> and the <source><nodemask> of
# sgx-epc devices; QEMU 7.0 added NUMA-aware virtual EPC and
# query-sgx-capabilities.  Older stacks can't place EPC on a NUMA node, so
# SGX is not offered on them at all.
MIN_LIBVIRT = (8, 10, 0)
MIN_QEMU = (7, 0, 0)
# The in-kernel SGX driver (/dev/sgx_enclave, the 'sgx' flag in /proc/cpuinfo):
# older kernels need the out-of-tree isgx driver and never list the flag.
MIN_KERNEL_SGX_DRIVER = (5, 11)


def older_than(found: tuple[int, ...], minimum: tuple[int, ...]) -> bool:
    """Whether version ``found`` predates ``minimum``: the one comparison of
    versions, so a check never writes its own (tuples compare part by part)."""
    return found < minimum


def dotted(version: tuple[int, ...]) -> str:
    """``(8, 10, 0)`` -> ``"8.10.0"``: how messages print a version."""
    return ".".join(str(part) for part in version)


# -- the OpenStack releases sgxcloud supports -------------------------------


@dataclasses.dataclass(frozen=True)
class Release:
    """One supported OpenStack release: its Nova and Placement series."""

    name: str  # "2024.1"
    codename: str
    nova_major: int
    placement_major: int
    slurp: bool  # skip-level upgrade release (operators upgrade SLURP to SLURP)

    def __str__(self) -> str:
        name = f"{self.name} {self.codename}" if self.codename else self.name
        return f"{name} (Nova {self.nova_major})"


RELEASES: tuple[Release, ...] = (
    Release("2024.1", "Caracal", 29, 11, slurp=True),
    Release("2025.1", "Epoxy", 31, 13, slurp=True),
    Release("2026.1", "Gazpacho", 33, 15, slurp=True),
    Release("2026.2", "", 34, 16, slurp=False),
)
NEWEST = RELEASES[-1]


def release_for_nova(nova_version: str) -> Release:
    """The supported release whose Nova series ``nova_version`` is in."""
    try:
        major = int(nova_version.split(".", 1)[0])
    except ValueError:
        raise UnsupportedRelease(f"cannot read Nova version {nova_version!r}") from None
    for release in RELEASES:
        if release.nova_major == major:
            return release
    supported = ", ".join(str(r) for r in RELEASES)
    raise UnsupportedRelease(
        f"Nova {nova_version} is not a supported release (supported: {supported})"
    )


def installed_release() -> Release | None:
    """The release of the Nova installed next to sgxcloud; None without Nova."""
    try:
        version = metadata.version("nova")
    except metadata.PackageNotFoundError:
        return None
    return release_for_nova(version)


# -- behaviour that differs between releases --------------------------------


def driver_receives_startup_instances() -> bool:
    """Whether Nova calls ``process_instances_at_startup`` (Nova 34 on)."""
    from nova.virt import driver

    return hasattr(driver.ComputeDriver, "process_instances_at_startup")


def instances_on_host(host: str) -> Any:
    """The instances Nova's compute manager processes at start-up on ``host``
    (what Nova 34 hands to ``process_instances_at_startup``), with flavors."""
    from nova import context, objects

    return objects.InstanceList.get_by_host(
        context.get_admin_context(), host, expected_attrs=["flavor"]
    )


def placement_endpoint(test: Any) -> str:
    """The in-process Placement's endpoint in Nova's functional harness."""
    fixture = getattr(test, "placement_fixture", None) or test.placement.fixture
    return fixture.endpoint
