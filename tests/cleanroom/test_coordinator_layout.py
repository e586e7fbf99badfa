"""The coordinator's metrics live in its package (sgxcloud.cleanroom.coordinator.metrics,
as the CAS's sgxcloud.cas.service.metrics); the old module path still gives the same names."""

from __future__ import annotations

import importlib

import pytest

import sgxcloud.cleanroom.coordinator.metrics as metrics


@pytest.mark.parametrize(
    "name", sorted(importlib.import_module("sgxcloud.cleanroom.metrics").__all__)
)
def test_the_old_metrics_path_exports_the_same_objects(name: str) -> None:
    old = importlib.import_module("sgxcloud.cleanroom.metrics")
    assert getattr(old, name) is getattr(metrics, name)
