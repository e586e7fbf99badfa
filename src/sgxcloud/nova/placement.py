"""EPC per compute node as Placement accounts it (inventory, usage, traits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sgxcloud.nova import resources
from sgxcloud.nova.errors import UsageError

# -- EPC capacity per compute node (Placement) --------------------------------


@dataclass(frozen=True)
class HostEpc:
    """One compute node's EPC as Placement accounts it."""

    name: str
    uuid: str
    total_mb: int
    reserved_mb: int
    used_mb: int
    traits: tuple[str, ...]
    sgx_servers: int

    @property
    def free_mb(self) -> int:
        # EPC is never over-committed (allocation ratio 1.0).
        return max(self.total_mb - self.reserved_mb - self.used_mb, 0)


def host_epc(conn: Any) -> list[HostEpc]:
    """Every resource provider with EPC inventory or the SGX trait, by name."""
    placement = conn.placement
    providers = _placement_get(placement, "/resource_providers", "1.14")["resource_providers"]
    hosts = []
    for provider in providers:
        uuid = provider["uuid"]
        base = f"/resource_providers/{uuid}"
        inventory = _placement_get(placement, f"{base}/inventories", "1.14")["inventories"]
        traits = _placement_get(placement, f"{base}/traits", "1.14")["traits"]
        epc = inventory.get(resources.EPC_RESOURCE_CLASS)
        if epc is None and resources.TRAIT_SGX not in traits:
            continue
        used = _placement_get(placement, f"{base}/usages", "1.14")["usages"]
        allocations = _placement_get(placement, f"{base}/allocations", "1.14")["allocations"]
        sgx_servers = sum(
            1
            for alloc in allocations.values()
            if alloc["resources"].get(resources.EPC_RESOURCE_CLASS, 0) > 0
        )
        hosts.append(
            HostEpc(
                name=provider["name"],
                uuid=uuid,
                total_mb=(epc or {}).get("total", 0),
                reserved_mb=(epc or {}).get("reserved", 0),
                used_mb=used.get(resources.EPC_RESOURCE_CLASS, 0),
                traits=tuple(t for t in resources.SGX_TRAITS if t in traits),
                sgx_servers=sgx_servers,
            )
        )
    return sorted(hosts, key=lambda h: h.name)


def _placement_get(placement: Any, path: str, microversion: str) -> dict[str, Any]:
    response = placement.get(path, microversion=microversion)
    if response.status_code != 200:
        raise UsageError(f"Placement GET {path} failed with HTTP {response.status_code}")
    return response.json()
