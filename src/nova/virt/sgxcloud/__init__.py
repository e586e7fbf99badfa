"""Shim so that ``compute_driver = sgxcloud.SGXLibvirtDriver`` loads our driver.

Nova imports compute drivers only as ``nova.virt.<compute_driver>``; the
driver itself lives in :mod:`sgxcloud.nova.driver`.
"""

from sgxcloud.nova.driver import SGXLibvirtDriver  # noqa: F401
