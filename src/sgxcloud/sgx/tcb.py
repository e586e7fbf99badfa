"""Platform TCB statuses, as Intel's PCS/PCCS TCB info and DCAP verifiers name them."""

from __future__ import annotations

TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
"""Every status a TCB level can have; ``Revoked`` must never be accepted."""
