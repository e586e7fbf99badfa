"""The coordinator enclave: pulls approved data from attested nodes, runs
analyses with the engine, signs results, and serves the HTTP API.

One role per module, as the CAS's (:mod:`sgxcloud.cas.service`), so each can
be tested alone:

- :mod:`.service`: :class:`Coordinator` (state, ingestion, queries, the key
  files in its workdir; no HTTP) and :class:`CoordinatorConfig`;
- :mod:`.schemas`: the API's wire shapes (its error answer);
- :mod:`.app`: :func:`create_app` (FastAPI: decode, call, encode; one table
  maps errors to statuses);
- :mod:`.metrics`: Prometheus metrics, by wrapping :class:`Coordinator`
  (:class:`~.metrics.MeasuredCoordinator`), on a loopback listener of their own;
- :mod:`.server`: :func:`serve`, the composition root (HTTPS, limits, metrics).

The names below were all importable from ``sgxcloud.cleanroom.coordinator``
when it was one module, and still are.
"""

from sgxcloud.cleanroom.coordinator.app import (
    API_VERSION,
    MAX_QUERY_BODY_BYTES,
    MAX_QUERY_DEPTH,
    MAX_QUERY_VALUES,
    create_app,
    openapi_document,
)
from sgxcloud.cleanroom.coordinator.server import serve
from sgxcloud.cleanroom.coordinator.service import (
    NODE_REJECTED_MESSAGE,
    NODE_RETRY_PAUSES_S,
    PUBLIC_DATASET_FIELDS,
    PUBLIC_REASONS,
    STREAM_TIMEOUT_S,
    Coordinator,
    CoordinatorConfig,
    Progress,
    public_dataset_view,
)

__all__ = [
    "API_VERSION",
    "MAX_QUERY_BODY_BYTES",
    "MAX_QUERY_DEPTH",
    "MAX_QUERY_VALUES",
    "NODE_REJECTED_MESSAGE",
    "NODE_RETRY_PAUSES_S",
    "PUBLIC_DATASET_FIELDS",
    "PUBLIC_REASONS",
    "STREAM_TIMEOUT_S",
    "Coordinator",
    "CoordinatorConfig",
    "Progress",
    "create_app",
    "openapi_document",
    "public_dataset_view",
    "serve",
]
