"""``openstack sgx host list``: EPC per compute node, from Placement."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from osc_lib.cli import format_columns
from osc_lib.command import command

from sgxcloud.nova import placement

COLUMNS = (
    "Host",
    "EPC Total MB",
    "EPC Reserved MB",
    "EPC Used MB",
    "EPC Free MB",
    "SGX Traits",
    "SGX Servers",
)


class ListSGXHost(command.Lister):
    _description = "List compute nodes with SGX: EPC total, reserved, used and free, traits"

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        hosts = placement.host_epc(self.app.client_manager.sgx)
        return COLUMNS, [
            (
                h.name,
                h.total_mb,
                h.reserved_mb,
                h.used_mb,
                h.free_mb,
                format_columns.ListColumn(h.traits),
                h.sgx_servers,
            )
            for h in hosts
        ]
