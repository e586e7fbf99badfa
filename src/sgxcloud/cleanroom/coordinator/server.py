"""The coordinator as a running server: its API over attested HTTPS, its
metrics apart (composition root, as :mod:`sgxcloud.cas.service.server`)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from sgxcloud.cleanroom.coordinator.app import MAX_QUERY_BODY_BYTES
from sgxcloud.cleanroom.coordinator.service import Coordinator
from sgxcloud.web.connections import tls_context
from sgxcloud.web.heap import freeze_startup_objects
from sgxcloud.web.limits import RequestLimits, uvicorn_options


def serve(
    coordinator: Coordinator,
    host: str,
    port: int,
    on_ready: Callable[[int, int | None], None] | None = None,
    *,
    limits: RequestLimits | None = None,
    max_query_bytes: int = MAX_QUERY_BODY_BYTES,
    metrics_listen: tuple[str, int] | None = None,
) -> None:
    """Serve the API over HTTPS with the coordinator's attested TLS key (blocks).

    With ``metrics_listen`` (a loopback address), ``GET /metrics`` is served
    there over plain HTTP; never on the API's port (see .metrics).
    ``on_ready(api_port, metrics_port_or_None)`` is called once both listen.
    """
    # Here, not above: uvicorn and prometheus_client load in a serving process only.
    import uvicorn

    from sgxcloud.cleanroom.coordinator.metrics import (
        CoordinatorMetrics,
        measured_app,
        serve_metrics,
    )

    limits = limits or RequestLimits()
    metrics = CoordinatorMetrics()
    metrics_server = serve_metrics(metrics, *metrics_listen) if metrics_listen else None
    try:
        cert, key = coordinator.tls.write_pem_files(coordinator.workdir / "tls")
        sock = socket.create_server((host, port))
        # TLS by the connection gate: every connection counted before its handshake.
        config = uvicorn.Config(
            measured_app(coordinator, metrics, limits=limits, max_query_bytes=max_query_bytes),
            # uvicorn's lines through the logging the command set up
            # (one format for the whole log), not a handler of its own
            log_level="warning",
            access_log=False,
            log_config=None,
            **uvicorn_options(limits, tls=tls_context(str(cert), str(key))),
        )
        server = uvicorn.Server(config)
        freeze_startup_objects()
        if on_ready:
            on_ready(sock.getsockname()[1], metrics_server.server_port if metrics_server else None)
        server.run(sockets=[sock])
    finally:
        if metrics_server:
            metrics_server.shutdown()
