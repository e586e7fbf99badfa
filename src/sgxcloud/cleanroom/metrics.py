"""Where the coordinator's metrics used to live: they are
:mod:`sgxcloud.cleanroom.coordinator.metrics` now (one role per module of the
coordinator's package, as the CAS's ``service/metrics.py``).  These names
stay importable from here."""

from sgxcloud.cleanroom.coordinator.metrics import (
    DATASET_STATES,
    QUERY_BUCKETS,
    CoordinatorMetrics,
    MeasuredCoordinator,
    check_metrics_address,
    measured_app,
    serve_metrics,
)

__all__ = [
    "DATASET_STATES",
    "QUERY_BUCKETS",
    "CoordinatorMetrics",
    "MeasuredCoordinator",
    "check_metrics_address",
    "measured_app",
    "serve_metrics",
]
