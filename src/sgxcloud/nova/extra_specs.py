"""Validators for the ``sgx:`` flavor extra specs.

Loaded by Nova's API through the ``nova.api.extra_spec_validators`` entry
point, so a misspelt key or a bad value fails when the flavor is created
(API microversion 2.86 and later), not when a server boots.
"""

from __future__ import annotations

from nova.api.validation.extra_specs import base

from sgxcloud.nova import requirements
from sgxcloud.sgx.tcb import TCB_STATUSES

_NEEDS_EPC = "  Needs ``resources:CUSTOM_SGX_EPC_MB``."

# key -> (what it does, what its boolean value means)
_BOOLEAN_KEYS = {
    requirements.SPEC_PROVISION_KEY: (
        "Give the guest the SGX provisioning key (CPU feature ``sgx-provisionkey``), "
        "which quoting enclaves need for DCAP remote attestation.  Only hosts "
        "exposing the provisioning key device are eligible.",
        "Whether to expose the provisioning key.",
    ),
    requirements.SPEC_REQUIRE_FLC: (
        "Only schedule on hosts with SGX flexible launch control (FLC), so the "
        "guest can run enclaves signed by any key (needed by DCAP and most SGX "
        "frameworks).",
        "Whether FLC is required.",
    ),
    requirements.SPEC_REQUIRE_SGX2: (
        "Only schedule on hosts with SGX2 (enclave dynamic memory management, EDMM).",
        "Whether SGX2 is required.",
    ),
}

# One or more TCB statuses, comma-separated; Revoked is never acceptable.
_TCB_LIST = "({0})(,({0}))*".format("|".join(s for s in TCB_STATUSES if s != "Revoked"))

EXTRA_SPEC_VALIDATORS = [
    *(
        base.ExtraSpecValidator(
            name=name,
            description=description + _NEEDS_EPC,
            value={"type": bool, "description": meaning},
        )
        for name, (description, meaning) in _BOOLEAN_KEYS.items()
    ),
    base.ExtraSpecValidator(
        name=requirements.SPEC_TCB_STATUS,
        description=(
            "Only schedule on hosts whose ``[sgx] tcb_status`` is one of these "
            "platform TCB statuses (comma-separated), so that quotes made in the "
            "guest pass verifiers that accept them." + _NEEDS_EPC
        ),
        value={
            "type": str,
            "pattern": _TCB_LIST,
            "description": "Accepted TCB statuses, e.g. ``UpToDate,SWHardeningNeeded``.",
        },
    ),
]


def register() -> list[base.ExtraSpecValidator]:
    return EXTRA_SPEC_VALIDATORS
