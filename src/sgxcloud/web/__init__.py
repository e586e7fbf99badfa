"""What the CAS and the clean-room coordinator share as HTTP services.

:mod:`sgxcloud.web.limits` bounds what an unauthenticated caller can make a
service hold (request bodies, headers, connections, time) before anything is
parsed; both services use it unchanged.  :mod:`sgxcloud.web.routing` serves
a service's hottest endpoints with less CPU than FastAPI's generic handling.
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
from sgxcloud.web.routing import DirectRoute

__all__ = [
    "BodyTooLarge",
    "DirectRoute",
    "LimitedH11Protocol",
    "LimitedHttpToolsProtocol",
    "RequestLimits",
    "RequestLimitsMiddleware",
    "RouteLimit",
    "uvicorn_options",
]
