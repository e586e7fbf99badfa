"""Validators for the ``sgx:`` flavor extra specs.

Loaded by Nova's API through the ``nova.api.extra_spec_validators`` entry
point, so a misspelt key or a bad value fails when the flavor is created
(API microversion 2.86 and later), not when a server boots.
"""

from __future__ import annotations

from nova.api.validation.extra_specs import base

from sgxcloud.nova import requirements

EXTRA_SPEC_VALIDATORS = [
    base.ExtraSpecValidator(
        name=requirements.SPEC_PROVISION_KEY,
        description=(
            "Give the guest the SGX provisioning key (CPU feature "
            "``sgx-provisionkey``), which quoting enclaves need for DCAP "
            "remote attestation.  Only hosts exposing the provisioning key "
            "device are eligible.  Needs ``resources:CUSTOM_SGX_EPC_MB``."
        ),
        value={"type": bool, "description": "Whether to expose the provisioning key."},
    ),
    base.ExtraSpecValidator(
        name=requirements.SPEC_REQUIRE_FLC,
        description=(
            "Only schedule on hosts with SGX flexible launch control (FLC), "
            "so the guest can run enclaves signed by any key (needed by DCAP "
            "and most SGX frameworks).  Needs ``resources:CUSTOM_SGX_EPC_MB``."
        ),
        value={"type": bool, "description": "Whether FLC is required."},
    ),
    base.ExtraSpecValidator(
        name=requirements.SPEC_REQUIRE_SGX2,
        description=(
            "Only schedule on hosts with SGX2 (enclave dynamic memory "
            "management, EDMM).  Needs ``resources:CUSTOM_SGX_EPC_MB``."
        ),
        value={"type": bool, "description": "Whether SGX2 is required."},
    ),
]


def register() -> list[base.ExtraSpecValidator]:
    return EXTRA_SPEC_VALIDATORS
