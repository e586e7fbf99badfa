"""Functional tests use the in-process SGX cloud from sgxcloud.nova.testing."""

from sgxcloud.nova.testing.cloud import SGXServersTestBase

__all__ = ["SGXServersTestBase"]
