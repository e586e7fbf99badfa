"""The ``[sgx]`` section of nova.conf, declared the way Nova declares options."""

from __future__ import annotations

from oslo_config import cfg

from sgxcloud.sgx.tcb import TCB_STATUSES

sgx_group = cfg.OptGroup(
    "sgx",
    title="Intel SGX options",
    help="""
Options for Intel SGX guests with virtual enclave page cache (EPC), used by
``compute_driver = sgxcloud.SGXLibvirtDriver`` on compute nodes and by the
``SGXFilter``/``SGXWeigher`` in the scheduler.
""",
)

sgx_opts = [
    cfg.IntOpt(
        "reserved_epc_mb",
        default=0,
        min=0,
        help="""
EPC in MiB kept back from guests, reported as ``reserved`` of the
``CUSTOM_SGX_EPC_MB`` inventory.

EPC cannot be over-committed: the kernel never reclaims EPC handed to a guest,
so the allocation ratio is always 1.0 and is not configurable.  Reserve EPC
here for enclaves run by the host itself (for example a local provisioning or
quoting enclave).

Possible values:

* 0 (default) or a positive number of MiB, less than the host's EPC.

Related options:

* ``[sgx] epc_step_mb``
""",
    ),
    cfg.IntOpt(
        "epc_step_mb",
        default=1,
        min=1,
        help="""
Granularity, in MiB, in which guests may ask for EPC (Placement ``step_size``).

QEMU sizes virtual EPC sections in 4 KiB pages, so any whole MiB works; a
coarser step keeps EPC from fragmenting into slices nobody can use.

Possible values:

* A positive number of MiB.  Flavors must ask for a multiple of it.
""",
    ),
    cfg.IntOpt(
        "max_epc_per_instance_mb",
        default=0,
        min=0,
        help="""
Largest EPC, in MiB, one guest may have (Placement ``max_unit``).

Possible values:

* 0 (default): the host's whole unreserved EPC.
* A positive number of MiB.
""",
    ),
    cfg.StrOpt(
        "provision_key_device",
        default="/dev/sgx_provision",
        help="""
Device node whose presence shows the host can give guests the SGX
provisioning key (``sgx-provisionkey``), which quoting enclaves need for
DCAP attestation.

Related options:

* Flavors ask for the key with ``sgx:provision_key=true``.
""",
    ),
    cfg.StrOpt(
        "tcb_status",
        default="unknown",
        choices=["unknown", *TCB_STATUSES],
        help="""
This host's SGX platform TCB status, as Intel's TCB info (from PCS or your
PCCS) rates its FMSPC and TCB level: what a verifier will say about quotes
produced here.  Published to the scheduler so that flavors with
``sgx:tcb_status`` land only on hosts whose status they accept.

Nova cannot measure it: set it from the verdict of a quote made on this host
(``sgxcloud attest verify``) and update it after microcode or BIOS updates
and TCB recoveries.

Possible values:

* ``unknown`` (default): the host passes no ``sgx:tcb_status`` requirement.
* A TCB status, e.g. ``UpToDate`` or ``SWHardeningNeeded``.
""",
    ),
    cfg.StrOpt(
        "placement_strategy",
        default="pack",
        choices=[
            (
                "pack",
                "Fill the SGX host with the least free EPC first, keeping "
                "large EPC slices free elsewhere.",
            ),
            ("spread", "Use the SGX host with the most free EPC first."),
        ],
        help="How ``SGXWeigher`` ranks SGX hosts for guests that need EPC.",
    ),
    cfg.FloatOpt(
        "weight_multiplier",
        default=10.0,
        min=0.0,
        help="""
Multiplier for ``SGXWeigher``.  Non-SGX guests are pushed off SGX hosts and
SGX guests are packed or spread with this strength relative to the other
weighers (RAM, CPU, ...), whose multipliers default to 1.0.

Possible values:

* 0.0 disables the weigher; larger values make it dominate.

Related options:

* ``[sgx] placement_strategy``
""",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(sgx_group)
    conf.register_opts(sgx_opts, group=sgx_group)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    """Entry point for ``oslo-config-generator --namespace sgxcloud``."""
    return [(sgx_group, sgx_opts)]
