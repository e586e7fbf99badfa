"""The coordinator's package holds one role per module, as the CAS's
sgxcloud.cas.service: its metrics too (coordinator/metrics.py, wired in
coordinator/server.py, the composition root)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("role", ["service", "schemas", "app", "metrics", "server"])
def test_each_role_is_a_module_of_the_coordinator_package(role: str) -> None:
    importlib.import_module(f"sgxcloud.cleanroom.coordinator.{role}")


def test_the_metrics_wrap_the_packages_app() -> None:
    """measured_app serves the package's own API, its routes unchanged."""
    from sgxcloud.cleanroom.coordinator import create_app
    from sgxcloud.cleanroom.coordinator.metrics import CoordinatorMetrics, measured_app

    class _Coordinator:  # to list the routes only; never called
        pass

    measured = measured_app(_Coordinator(), CoordinatorMetrics())
    plain = create_app(_Coordinator())  # type: ignore[arg-type]
    assert [r.path for r in measured.routes] == [r.path for r in plain.routes]
