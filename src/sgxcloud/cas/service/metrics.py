"""Prometheus metrics of the CAS: attestations, their latency, policies, collateral.

Wired in the composition root (``server.py``), never in ``core.py``: the
service is wrapped (:class:`MeasuredService`) and the collateral source is
observed (:class:`ObservedCollateral`), so the service logic knows nothing of
metrics.  Served over plain HTTP on a listener of their own
(:func:`serve_metrics`; settings ``metrics_host``, 127.0.0.1 by default, and
``metrics_port``), never on the API's port that enclaves and anyone else reach.

What a reader of /metrics learns is deliberately coarse: attestation counts by
verdict and by the stable reason *code* (``nonce``, ``policy``, ``binding``,
``collateral-expired``...), never policy names, services, measurements or
the reason sentences, which only a policy's owners may read (GET /v1/audit).
The code is that of the first problem found, and the problems that do not
depend on the policy (nonce, evidence, binding) are checked first: a request
that fails those counts the same whether the policy it names exists or not
(red team a02).

With several worker processes (setting ``workers``), each worker counts into
prometheus_client's multiprocess files in a directory private to that start
of the service (``PROMETHEUS_MULTIPROC_DIR``, set by the parent before the
workers start), and the parent serves /metrics for the whole service
(:class:`WorkerMetrics`): counts and histograms summed over the workers, the
dead ones included, the collateral the workers last used, and the state.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from sgxcloud.cas.collateral import collateral_window
from sgxcloud.cas.config import ConfigError
from sgxcloud.cas.errors import CollateralError, EvidenceError
from sgxcloud.cas.service.core import (
    AttestationRejected,
    CasService,
    MalformedAttestation,
    NotReady,
)

# Attestation verification is mostly quote checking (ms) but a PCCS fetch can
# take seconds: buckets from 5 ms to 10 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
COLLATERAL_ISSUED = "sgxcloud_cas_collateral_issue_timestamp_seconds"
COLLATERAL_ISSUED_HELP = (
    "Issue time of the collateral last used (latest issueDate/thisUpdate), Unix s"
)
COLLATERAL_EXPIRES = "sgxcloud_cas_collateral_expiry_timestamp_seconds"
COLLATERAL_EXPIRES_HELP = "When the collateral last used expires (earliest nextUpdate), Unix s"


class CasMetrics:
    """The CAS's metric families, in a registry of their own (one per service)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.attestations = Counter(
            "sgxcloud_cas_attestations",
            "Attestation requests judged, by verdict and reason code",
            ["verdict", "reason"],
            registry=self.registry,
        )
        self.attestation_seconds = Histogram(
            "sgxcloud_cas_attestation_duration_seconds",
            "Time to judge an attestation request, by verdict",
            ["verdict"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.nonces = Counter(
            "sgxcloud_cas_nonces_issued", "Nonces issued to enclaves", registry=self.registry
        )
        self.connections = Counter(
            "sgxcloud_cas_connections",
            "Connections the API's connection limits refused or evicted, or the "
            "workers moved to even out their load, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.collateral_errors = Counter(
            "sgxcloud_cas_collateral_fetch_errors",
            "Collateral that could not be loaded or fetched",
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self._collateral: tuple[int, int, float] | None = None  # not_before, not_after, seen
        # A worker of several: the collateral it uses goes to the shared files
        # too, where the parent finds the one any worker used last.
        self._shared_collateral: tuple[Gauge, Gauge] | None = None
        if os.environ.get(MULTIPROCESS_DIR):
            self._shared_collateral = (
                Gauge(COLLATERAL_ISSUED, COLLATERAL_ISSUED_HELP, registry=None,
                      multiprocess_mode="mostrecent"),
                Gauge(COLLATERAL_EXPIRES, COLLATERAL_EXPIRES_HELP, registry=None,
                      multiprocess_mode="mostrecent"),
            )  # fmt: skip

    def saw_collateral(self, not_before: int, not_after: int) -> None:
        with self._lock:
            self._collateral = (not_before, not_after, time.time())
        if self._shared_collateral is not None:
            issued, expires = self._shared_collateral
            issued.set(not_before)
            expires.set(not_after)

    def collateral(self) -> tuple[int, int, float] | None:
        with self._lock:
            return self._collateral

    def watch(self, service: CasService) -> None:
        """Report the service's state (policies) at each scrape."""
        self.registry.register(_StateCollector(service, self))


class WorkerMetrics:
    """/metrics of a service with several worker processes, served by their parent.

    The workers' counts and histograms (summed over every worker this start
    ran, the dead ones too, so counters never go back), the collateral any
    worker used last, readiness and policies from the parent's own service,
    and the workers themselves (live, restarted).
    """

    def __init__(self, service: CasService, directory: Path,
                 live_workers: Callable[[], int]) -> None:  # fmt: skip
        self.registry = CollectorRegistry(auto_describe=True)
        self.restarts = Counter(
            "sgxcloud_cas_worker_restarts",
            "Worker processes that died and were replaced",
            registry=self.registry,
        )
        self.registry.register(_WorkersCollector(service, directory, live_workers))


class _WorkersCollector(Collector):
    def __init__(self, service: CasService, directory: Path,
                 live_workers: Callable[[], int]) -> None:  # fmt: skip
        self._files = MultiProcessCollector(None, path=str(directory))
        self._state = _StateCollector(service, CasMetrics(CollectorRegistry()))
        self._live_workers = live_workers

    def describe(self) -> list:
        return []  # collected fresh at each scrape

    def collect(self) -> Iterator[Metric]:
        issued: float | None = None
        for family in self._files.collect():
            if family.name == COLLATERAL_ISSUED and family.samples:
                issued = family.samples[0].value
            yield family
        if issued is not None:
            age = GaugeMetricFamily(
                "sgxcloud_cas_collateral_age_seconds",
                "Age of the collateral last used at scrape time",
            )
            age.add_metric([], max(time.time() - issued, 0))
            yield age
        yield from self._state.collect()
        workers = GaugeMetricFamily("sgxcloud_cas_workers", "Worker processes running")
        workers.add_metric([], self._live_workers())
        yield workers


def serve_metrics(metrics: CasMetrics | WorkerMetrics, host: str, port: int) -> Any:
    """Serve ``GET /metrics`` over plain HTTP on ``host:port``, in a thread.

    Returns the server (``server_port``, ``shutdown()``).  Collection reads the
    database in that thread, never on the API's event loop.
    """
    try:
        server, _thread = start_http_server(port, addr=host.strip("[]"), registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen for metrics on {host}:{port} ({exc.strerror or exc}): "
            "set metrics_host/metrics_port"
        ) from None
    return server


class _StateCollector(Collector):
    def __init__(self, service: CasService, metrics: CasMetrics) -> None:
        self._service = service
        self._metrics = metrics

    def describe(self) -> list:
        return []  # collected fresh at each scrape

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily("sgxcloud_cas_ready", "1 when the service accepts requests")
        try:
            self._service._require_ready()
        except NotReady:
            ready.add_metric([], 0)
        else:
            ready.add_metric([], 1)
            policies = GaugeMetricFamily("sgxcloud_cas_policies", "Policies stored in the CAS")
            policies.add_metric([], self._service.database.run(lambda r: r.count_policies()))
            yield policies
        yield ready
        seen = self._metrics.collateral()
        if seen is not None:
            not_before, not_after, _ = seen
            issued = GaugeMetricFamily(COLLATERAL_ISSUED, COLLATERAL_ISSUED_HELP)
            issued.add_metric([], not_before)
            expires = GaugeMetricFamily(COLLATERAL_EXPIRES, COLLATERAL_EXPIRES_HELP)
            expires.add_metric([], not_after)
            age = GaugeMetricFamily(
                "sgxcloud_cas_collateral_age_seconds",
                "Age of the collateral last used at scrape time",
            )
            age.add_metric([], max(time.time() - not_before, 0))
            yield from (issued, expires, age)


class MeasuredService:
    """A :class:`CasService` whose attestations and nonces are counted and timed.

    Everything else passes through unchanged.
    """

    def __init__(self, service: CasService, metrics: CasMetrics) -> None:
        self._service = service
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)

    def issue_nonce(self, now: int) -> Any:
        grant = self._service.issue_nonce(now)
        self._metrics.nonces.inc()
        return grant

    def attest(self, request: Any, now: int) -> Any:
        started = time.perf_counter()
        verdict, reason = "error", "internal"
        try:
            result = self._service.attest(request, now)
            verdict, reason = "accepted", "none"
            return result
        except MalformedAttestation:
            verdict, reason = "rejected", "malformed"
            raise
        except (AttestationRejected, EvidenceError) as exc:
            verdict, reason = "rejected", exc.code or "policy"
            raise
        except NotReady:
            reason = "not-ready"
            raise
        except CollateralError:
            reason = "collateral-unavailable"
            raise
        finally:
            self._metrics.attestations.labels(verdict, reason).inc()
            self._metrics.attestation_seconds.labels(verdict).observe(time.perf_counter() - started)


class ObservedCollateral:
    """A collateral source that remembers the validity of what it last returned."""

    def __init__(self, source: Any, metrics: CasMetrics) -> None:
        self._source = source
        self._metrics = metrics

    def __repr__(self) -> str:
        return repr(self._source)

    def get(self, quote: bytes, now: int) -> Any:
        try:
            collateral = self._source.get(quote, now)
        except CollateralError:
            self._metrics.collateral_errors.inc()
            raise
        try:
            window = collateral_window(collateral)
        except CollateralError:
            return collateral  # the verifier will say why it is unusable
        self._metrics.saw_collateral(window.not_before, window.not_after)
        return collateral
