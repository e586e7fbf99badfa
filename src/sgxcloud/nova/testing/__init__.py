"""An in-process SGX cloud on Nova's own functional-test harness.

Real Nova API, conductor, scheduler and Placement; libvirt faked the way
Nova's functional tests fake it, with hosts whose fake libvirt reports SGX.
Used by our functional tests and by the demo; needs Nova's test
dependencies (the ``test`` extra).  Nothing here talks to real hardware.
"""
