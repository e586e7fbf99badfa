"""What the CAS and the clean-room coordinator share as HTTP services.

:mod:`sgxcloud.web.limits` bounds what an unauthenticated caller can make a
service hold (request bodies, headers, connections, time) before anything is
parsed, and what a JSON body may cost to parse (its values, counted first);
both services use it unchanged.  :mod:`sgxcloud.web.connections`
counts every connection from its accept, before TLS (per service and per
client address), which :func:`uvicorn_options` puts in front of the server.
:mod:`sgxcloud.web.routing` serves
a service's hottest endpoints with less CPU than FastAPI's generic handling
(:class:`DirectRoute`), ahead of its middleware stack (:class:`DirectApp`);
:mod:`sgxcloud.web.offload` runs their blocking work on threads of their own
(:class:`OffloadThreads`).
"""

from sgxcloud.web.limits import (
    BodyTooLarge,
    LimitedH11Protocol,
    LimitedHttpToolsProtocol,
    RequestLimits,
    RequestLimitsMiddleware,
    RouteLimit,
    uvicorn_options,
)
from sgxcloud.web.offload import OffloadThreads
from sgxcloud.web.routing import TELEMETRY_OFF, DirectApp, DirectRoute, JSONAnswer

__all__ = [
    "TELEMETRY_OFF",
    "BodyTooLarge",
    "DirectApp",
    "DirectRoute",
    "JSONAnswer",
    "LimitedH11Protocol",
    "LimitedHttpToolsProtocol",
    "OffloadThreads",
    "RequestLimits",
    "RequestLimitsMiddleware",
    "RouteLimit",
    "uvicorn_options",
]
