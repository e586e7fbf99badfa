"""Validators for the ``sgx:`` flavor extra specs.

Loaded by Nova's API through the ``nova.api.extra_spec_validators`` entry
point, so a misspelt key or a bad value fails when the flavor is created
(API microversion 2.86 and later), not when a server boots.
"""

from __future__ import annotations

from nova.api.validation.extra_specs import base

from sgxcloud.nova import requirements

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

EXTRA_SPEC_VALIDATORS = [
    base.ExtraSpecValidator(
        name=name,
        description=description + _NEEDS_EPC,
        value={"type": bool, "description": meaning},
    )
    for name, (description, meaning) in _BOOLEAN_KEYS.items()
]


def register() -> list[base.ExtraSpecValidator]:
    return EXTRA_SPEC_VALIDATORS
