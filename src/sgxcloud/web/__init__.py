"""What the CAS and the clean-room coordinator share as HTTP services.

:mod:`sgxcloud.web.limits` bounds what an unauthenticated caller can make a
service hold (request bodies, headers, connections, time) before anything is
parsed; both services use it unchanged.
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

__all__ = [
    "BodyTooLarge",
    "LimitedH11Protocol",
    "LimitedHttpToolsProtocol",
    "RequestLimits",
    "RequestLimitsMiddleware",
    "RouteLimit",
    "uvicorn_options",
]
