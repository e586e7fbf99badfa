"""Errors of the Nova layer (usage, Placement reads, node checks, libvirt
capabilities, release support), under one root.

The modules that raise them re-export them under their historical names
(``sgxcloud.nova.checks.tree.TreeReadError``, ``sgxcloud.nova.compat.UnsupportedRelease``...).
This module imports nothing but :mod:`sgxcloud.errors`: the node check uses it
without Nova installed.
"""

from __future__ import annotations

from sgxcloud.errors import InputError, SgxcloudError


class NovaLayerError(SgxcloudError):
    """Root of the errors the Nova layer raises to its callers."""

    exit_code = 1


class UsageError(NovaLayerError):
    """Usage could not be computed from what the cloud returned."""


class UnsupportedRelease(NovaLayerError):
    """The installed Nova belongs to no supported OpenStack release."""

    exit_code = 2


class SGXCapabilitiesError(InputError, NovaLayerError):
    """Domain capabilities XML that is not what libvirt writes."""


class TreeReadError(InputError, NovaLayerError):
    """A file under the root could not be read; ``reason`` is one short phrase."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class MissingFile(TreeReadError):
    """The file does not exist (or its process exited while we looked)."""
