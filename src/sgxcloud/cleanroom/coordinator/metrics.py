"""Prometheus metrics of the clean-room coordinator, on a listener of their own.

Who reads them: the coordinator's operator, who in the clean-room trust
model is *not* trusted with the data.  So the metrics hold nothing about a
person or a query, and of the data only what the privacy model leaves
visible to the operator (docs/cleanroom/privacy-model.md, "Timing and
sizes"): how many rows each provider sent and how long ingestion took.
Other *parties* do not get those (``/v1/status`` gives each provider its own
datasets' counts only), so the metrics must never be served to them.
What they hold:

- queries released, and refused by the engine's fixed reason code
  (``not_allowed``, ``budget``, ``differencing``, ``suppressed``) — never the
  query, its template, its parameters, the analysis name or a result;
- differential-privacy budget spent and total per analyst — analysts are
  parties named in the definition (organisations), not data subjects;
- per dataset (the definition's ``provider.dataset`` names): its state,
  the rows held and the duration and size of its last ingestion.

They are still who asked how much, when, and how many rows each provider
holds, which no party but that provider and no stranger may see.  So they
are not on the API's port (which any network client can reach) but on a
plain-HTTP listener of their own that accepts loopback
addresses only (:func:`serve_metrics`, ``--metrics-listen``): Prometheus, or
an authenticating proxy, scrapes them on the coordinator's host.

Wired by wrapping the coordinator (:class:`MeasuredCoordinator`) where the app
is served; the coordinator and engine know nothing of metrics.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sgxcloud.cleanroom.errors import REFUSAL_REASONS, QueryRefused
from sgxcloud.errors import InputError

QUERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DATASET_STATES = ("pending", "ingesting", "ingested", "rejected", "failed")


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.released = Counter(
            "sgxcloud_cleanroom_queries_released",
            "Queries whose result was released",
            registry=self.registry,
        )
        self.refused = Counter(
            "sgxcloud_cleanroom_queries_refused",
            "Queries refused by the engine, by reason code",
            ["reason"],
            registry=self.registry,
        )
        self.failed = Counter(
            "sgxcloud_cleanroom_queries_failed",
            "Queries that were malformed or hit an error (nothing released)",
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "sgxcloud_cleanroom_query_duration_seconds",
            "Time to run a query, released or not",
            buckets=QUERY_BUCKETS,
            registry=self.registry,
        )
        for reason in REFUSAL_REASONS:  # every code present from the start, at 0
            self.refused.labels(reason)

    def watch(self, coordinator: Any) -> None:
        self.registry.register(_StateCollector(coordinator))


def check_metrics_address(host: str) -> None:
    """Refuse a metrics listener anyone but this host could reach."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InputError(
            f"--metrics-listen {host}: metrics name each analyst's budget spent and each "
            "dataset's rows and ingestion times, so they are served on loopback only "
            "(127.0.0.1 or ::1); scrape them on this host or through a proxy that "
            "authenticates"
        )


def serve_metrics(metrics: CoordinatorMetrics, host: str, port: int) -> Any:
    """Serve ``GET /metrics`` over plain HTTP on a loopback address, in a thread.

    Returns the server (``server_port``, ``shutdown()``).  Collection reads the
    coordinator's state under its locks, never on the API's event loop.
    """
    check_metrics_address(host)
    try:
        server, _thread = start_http_server(port, addr=host.strip("[]"), registry=metrics.registry)
    except OSError as exc:
        raise InputError(
            f"cannot listen for metrics on {host}:{port} ({exc.strerror or exc})"
        ) from None
    return server


class _StateCollector(Collector):
    def __init__(self, coordinator: Any) -> None:
        self._coordinator = coordinator

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        c = self._coordinator
        spent = GaugeMetricFamily(
            "sgxcloud_cleanroom_dp_budget_spent",
            "Differential-privacy budget (epsilon) an analyst has spent",
            labels=["analyst"],
        )
        total = GaugeMetricFamily(
            "sgxcloud_cleanroom_dp_budget_limit",
            "Differential-privacy budget (epsilon) an analyst is given",
            labels=["analyst"],
        )
        for party in c.definition.parties_with_role("analyst"):
            status = c.budget(party.name)
            spent.add_metric([party.name], float(status["spent"]))
            total.add_metric([party.name], float(status["total"]))
        rows = GaugeMetricFamily(
            "sgxcloud_cleanroom_dataset_rows",
            "Rows of a dataset that queries use now",
            labels=["dataset"],
        )
        seconds = GaugeMetricFamily(
            "sgxcloud_cleanroom_ingestion_duration_seconds",
            "Duration of a dataset's last successful ingestion",
            labels=["dataset"],
        )
        size = GaugeMetricFamily(
            "sgxcloud_cleanroom_ingestion_bytes",
            "Bytes received in a dataset's last successful ingestion",
            labels=["dataset"],
        )
        state = GaugeMetricFamily(
            "sgxcloud_cleanroom_dataset_state",
            "1 for the state a dataset is in",
            labels=["dataset", "state"],
        )
        for ref, entry in sorted(c.status().items()):
            rows.add_metric([ref], float(entry.get("rows") or 0))
            if "seconds" in entry:
                seconds.add_metric([ref], float(entry["seconds"]))
                size.add_metric([ref], float(entry.get("bytes") or 0))
            for name in DATASET_STATES:
                state.add_metric([ref, name], 1.0 if entry.get("state") == name else 0.0)
        yield from (spent, total, rows, seconds, size, state)


class MeasuredCoordinator:
    """The coordinator, with each query counted by outcome and timed."""

    def __init__(self, coordinator: Any, metrics: CoordinatorMetrics) -> None:
        self._coordinator = coordinator
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._coordinator, name)

    def run_query(self, query: dict[str, Any], analyst: str) -> Any:
        started = time.perf_counter()
        try:
            result = self._coordinator.run_query(query, analyst)
        except QueryRefused as exc:
            self._metrics.refused.labels(exc.reason).inc()
            raise
        except Exception:
            self._metrics.failed.inc()
            raise
        finally:
            self._metrics.query_seconds.observe(time.perf_counter() - started)
        self._metrics.released.inc()
        return result


def measured_app(coordinator: Any, metrics: CoordinatorMetrics, **app_options: Any) -> Any:
    """The coordinator's API with queries measured into ``metrics`` (served apart:
    :func:`serve_metrics`); ``app_options``, e.g. request limits, go to ``create_app``."""
    from sgxcloud.cleanroom.coordinator.app import create_app

    metrics.watch(coordinator)
    return create_app(MeasuredCoordinator(coordinator, metrics), **app_options)
