"""Read-only readiness checks for SGX hosts, their VMs' EPC, and guests.

Every check works on a live machine (``root="/"``) or on a recorded copy of
its files, returns a :class:`Report` of :class:`Finding` objects and never
raises for a machine's state; a bad ``root`` raises :class:`InputError`.
"""

from sgxcloud.errors import InputError
from sgxcloud.nova.checks.guest import check_guest
from sgxcloud.nova.checks.host import check_host
from sgxcloud.nova.checks.model import SCHEMA_VERSION, Finding, Report, Status
from sgxcloud.nova.checks.vm_epc import check_vm_epc

__all__ = [
    "SCHEMA_VERSION",
    "Finding",
    "InputError",
    "Report",
    "Status",
    "check_guest",
    "check_host",
    "check_vm_epc",
]
