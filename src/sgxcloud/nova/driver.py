"""``SGXLibvirtDriver``: Nova's libvirt driver with Intel SGX guests.

Loaded with ``compute_driver = sgxcloud.SGXLibvirtDriver`` (through the
``nova.virt.sgxcloud`` shim).  On top of the libvirt driver it

- reports ``CUSTOM_SGX_EPC_MB`` inventory and SGX traits to Placement,
- publishes EPC and feature stats for ``SGXFilter``/``SGXWeigher``,
- gives guests whose flavor asks for EPC an ``sgx-epc`` memory device,
- refuses suspend and live migration of SGX guests (EPC can't be saved or
  migrated), and
- refuses to start when SGX guests live here but SGX is gone.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from functools import cached_property
from typing import Any

import nova.conf
from nova import exception
from nova.compute import utils as compute_utils
from nova.virt.libvirt import driver as libvirt_driver
from oslo_log import log as logging

from sgxcloud.nova import compat, designer, resources
from sgxcloud.nova import conf as sgx_conf
from sgxcloud.nova.accounting import epc_event_name
from sgxcloud.nova.config import sgx_epc_devices
from sgxcloud.nova.host import SGXHost
from sgxcloud.nova.requirements import EPC_CANNOT_MOVE, SGXRequest, sgx_request_from_flavor
from sgxcloud.sgx.epc import KIB, kib_to_mib

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF
sgx_conf.register_opts(CONF)


class SGXLibvirtDriver(libvirt_driver.LibvirtDriver):
    @cached_property
    def _sgx_host(self) -> SGXHost:
        return SGXHost(self._host, CONF.libvirt.virt_type, CONF.sgx.provision_key_device)

    # -- start-up -------------------------------------------------------------

    def init_host(self, host):
        super().init_host(host)
        # Nova 29-33 have no process_instances_at_startup: look the host's
        # instances up here, still before anything is reported to Placement.
        if not compat.driver_receives_startup_instances():
            self._validate_sgx_configuration(compat.instances_on_host(host))

    def process_instances_at_startup(self, context, instances):  # Nova 34 on
        instances = super().process_instances_at_startup(context, instances)
        self._validate_sgx_configuration(instances)
        return instances

    def _validate_sgx_configuration(self, instances) -> None:
        """Refuse to start if SGX servers live here but SGX is gone (as Nova
        does for SEV/TDX): their EPC would silently vanish on next boot."""
        if self._sgx_host.capabilities.supported:
            return
        sgx_servers = [
            instance.uuid
            for instance in instances
            if not instance.deleted and sgx_request_from_flavor(instance.flavor).wants_sgx
        ]
        if sgx_servers:
            raise exception.InvalidConfiguration(
                f"This host has {len(sgx_servers)} SGX server(s) "
                f"({', '.join(sgx_servers)}) but SGX is no longer available "
                f"({self._sgx_host.capabilities.reason}). Re-enable SGX in "
                "firmware/libvirt; or mark this compute service down "
                "(openstack compute service set --down), evacuate or delete "
                "these servers, then restart nova-compute."
            )

    # -- Placement and scheduler stats --------------------------------------

    def update_provider_tree(self, provider_tree, nodename, allocations=None):
        super().update_provider_tree(provider_tree, nodename, allocations=allocations)
        inventory = dict(provider_tree.data(nodename).inventory)
        inventory.pop(resources.EPC_RESOURCE_CLASS, None)
        epc = self._epc_inventory()
        if epc:
            inventory[resources.EPC_RESOURCE_CLASS] = epc
        provider_tree.update_inventory(nodename, inventory)

        wanted = self._sgx_traits()
        provider_tree.add_traits(nodename, *wanted)
        provider_tree.remove_traits(nodename, *(set(resources.SGX_TRAITS) - wanted))
        # The parent kept a copy for spawn(); keep it in step with our changes.
        self.provider_tree = copy.deepcopy(provider_tree)

    def _epc_inventory(self) -> dict[str, Any] | None:
        capabilities = self._sgx_host.capabilities
        total = capabilities.epc_total_mb
        if not capabilities.supported or total <= 0:
            return None
        reserved = _reserved_epc_mb(total)
        if reserved == total:
            LOG.warning(
                "[sgx] reserved_epc_mb (%d) leaves none of the %d MiB EPC for guests",
                CONF.sgx.reserved_epc_mb,
                total,
            )
        max_unit = total - reserved
        if CONF.sgx.max_epc_per_instance_mb:
            max_unit = min(max_unit, CONF.sgx.max_epc_per_instance_mb)
        step = CONF.sgx.epc_step_mb
        return {
            "total": total,
            "reserved": reserved,
            "min_unit": step,
            "max_unit": max(max_unit - max_unit % step, step),
            "step_size": step,
            # EPC given to a guest is never reclaimed: no over-commit, ever.
            "allocation_ratio": 1.0,
        }

    def _sgx_traits(self) -> set[str]:
        capabilities = self._sgx_host.capabilities
        if not capabilities.supported:  # supported implies EPC (host.py)
            return set()
        traits = {resources.TRAIT_SGX}
        if capabilities.flc:
            traits.add(resources.TRAIT_SGX_FLC)
        if capabilities.sgx2:
            traits.add(resources.TRAIT_SGX2)
        return traits

    def get_available_resource(self, nodename):
        data = super().get_available_resource(nodename)
        data["stats"] = {**(data.get("stats") or {}), **self._sgx_stats()}
        return data

    def _sgx_stats(self) -> dict[str, str]:
        capabilities = self._sgx_host.capabilities
        if not capabilities.supported:
            return {resources.STAT_SGX: "false"}
        total = capabilities.epc_total_mb
        reserved = _reserved_epc_mb(total)
        used = kib_to_mib(sum(self._epc_used_kib_by_node().values()))
        return {
            resources.STAT_SGX: "true",
            resources.STAT_EPC_TOTAL_MB: str(total),
            resources.STAT_EPC_RESERVED_MB: str(reserved),
            resources.STAT_EPC_FREE_MB: str(max(total - reserved - used, 0)),
            resources.STAT_FLC: str(capabilities.flc).lower(),
            resources.STAT_SGX2: str(capabilities.sgx2).lower(),
            resources.STAT_PROVISION_KEY: str(self._sgx_host.provision_key).lower(),
            resources.STAT_TCB_STATUS: CONF.sgx.tcb_status,
        }

    def _epc_used_kib_by_node(self, exclude_uuid: str | None = None) -> dict[int, int]:
        """EPC given to the guests libvirt has defined here, per host NUMA node.

        Read from the domains themselves, so it is right even for guests
        Nova did not start.  EPC bound to several nodes is split evenly.
        """
        used: dict[int, int] = defaultdict(int)
        for guest in self._host.list_guests(only_running=False):
            if exclude_uuid and guest.uuid == exclude_uuid:
                continue
            try:
                devices = sgx_epc_devices(guest.get_xml_desc())
            except Exception as exc:  # a domain vanishing mid-scan is normal
                LOG.debug("Skipping domain %s while counting EPC: %s", guest.uuid, exc)
                continue
            for device in devices:
                nodes = sorted(device.source_nodemask or {0})
                for node in nodes:
                    used[node] += device.target_size_kib // len(nodes)
        return used

    # -- guest XML -----------------------------------------------------------

    def _get_guest_config(self, instance, network_info, image_meta, disk_info, *args, **kwargs):
        guest = super()._get_guest_config(
            instance, network_info, image_meta, disk_info, *args, **kwargs
        )
        request = sgx_request_from_flavor(instance.flavor)
        if request.wants_sgx:
            self._add_sgx_to_guest(guest, instance, request)
        if request.wants_sgx or _had_sgx(instance):
            # Nova's own context argument (positional after rescue, block_device_info).
            context = args[2] if len(args) > 2 else kwargs.get("context")
            _record_epc_size(context, instance, request.epc_mb)
        return guest

    def _add_sgx_to_guest(self, guest, instance, request: SGXRequest) -> None:
        capabilities = self._sgx_host.capabilities
        if not capabilities.supported:
            raise exception.InvalidConfiguration(
                f"Server {instance.uuid} needs {request.epc_mb} MiB EPC but this "
                f"host offers no SGX ({capabilities.reason})"
            )
        if request.provision_key and not self._sgx_host.provision_key:
            raise exception.InvalidConfiguration(
                f"Server {instance.uuid} asks for the SGX provisioning key but "
                f"{CONF.sgx.provision_key_device} is absent on this host"
            )
        used_kib = self._epc_used_kib_by_node(exclude_uuid=instance.uuid)
        free_kib = (
            capabilities.epc_total_mb - _reserved_epc_mb(capabilities.epc_total_mb)
        ) * KIB - sum(used_kib.values())
        if request.epc_mb * KIB > free_kib:
            # EPC given to a guest is never reclaimed: never over-commit, whatever
            # Placement believed (guests defined outside Nova, a flavor key Nova
            # read differently). Nova reschedules the build elsewhere.
            raise exception.ComputeResourcesUnavailable(
                reason=f"server {instance.uuid} needs {request.epc_mb} MiB EPC but this "
                f"host has only {kib_to_mib(max(free_kib, 0))} MiB free (EPC is never "
                "over-committed)"
            )
        nodemask = designer.choose_host_nodemask(
            capabilities,
            request.epc_mb * KIB,
            used_kib,
            preferred_nodes=_host_cells_of(instance),
        )
        designer.add_sgx_epc(guest, request, capabilities, nodemask)
        LOG.info(
            "Giving server %s %d MiB EPC from host NUMA node(s) %s",
            instance.uuid,
            request.epc_mb,
            sorted(nodemask) if nodemask else "chosen by QEMU",
            instance=instance,
        )

    # -- lifecycle refusals --------------------------------------------------

    def suspend(self, context, instance):
        _refuse_if_sgx(instance, "Suspend")
        return super().suspend(context, instance)

    def check_can_live_migrate_destination(self, context, instance, *args, **kwargs):
        _refuse_if_sgx(instance, "Live migration", precheck=True)
        return super().check_can_live_migrate_destination(context, instance, *args, **kwargs)

    def check_can_live_migrate_source(self, context, instance, *args, **kwargs):
        _refuse_if_sgx(instance, "Live migration", precheck=True)
        return super().check_can_live_migrate_source(context, instance, *args, **kwargs)


def _had_sgx(instance) -> bool:
    """The server is being resized away from a flavor with EPC."""
    old = instance.old_flavor if instance.obj_attr_is_set("old_flavor") else None
    return old is not None and sgx_request_from_flavor(old).wants_sgx


def _record_epc_size(context, instance, epc_mb: int) -> None:
    """Leave the size the guest gets in Nova's record of the action that gives
    it (an instance-action event).  Usage accounting reads it back: unlike
    migration records, instance actions outlive the server's deletion, so the
    EPC bill of a resized, then deleted server stays exact."""
    if context is None:
        return
    try:
        with compute_utils.EventReporter(context, epc_event_name(epc_mb), CONF.host, instance.uuid):
            pass
    except Exception as exc:  # accounting falls back to migration records
        LOG.debug("Could not record the EPC size of %s: %s", instance.uuid, exc)


def _reserved_epc_mb(total_mb: int) -> int:
    """``[sgx] reserved_epc_mb``, never more than the host has."""
    return min(CONF.sgx.reserved_epc_mb, total_mb)


class SGXOperationNotSupported(exception.Invalid):
    msg_fmt = EPC_CANNOT_MOVE.replace("{action}", "%(action)s")


def _refuse_if_sgx(instance, action: str, precheck: bool = False) -> None:
    if not sgx_request_from_flavor(instance.flavor).wants_sgx:
        return
    if precheck:
        raise exception.MigrationPreCheckError(reason=EPC_CANNOT_MOVE.format(action=action))
    raise SGXOperationNotSupported(action=action)


def _host_cells_of(instance) -> set[int] | None:
    topology = getattr(instance, "numa_topology", None)
    if not topology:
        return None
    return {cell.id for cell in topology.cells}
