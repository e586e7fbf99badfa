"""Serve the console on 127.0.0.1 only."""

from __future__ import annotations

import socket
from collections.abc import Callable

from sgxcloud.cleanroom.console.app import create_app
from sgxcloud.cleanroom.console.security import Guard
from sgxcloud.cleanroom.console.session import PartySession

HOST = "127.0.0.1"
"""Never anything else: the console acts with the party's key for whoever reaches it."""


def bind(port: int = 0) -> socket.socket:
    """The listening socket, bound before the URL (with its port) is printed."""
    return socket.create_server((HOST, port))


def serve(
    session: PartySession, sock: socket.socket, on_ready: Callable[[Guard], None] | None = None
) -> None:
    """Serve until interrupted.  Access logging stays off: a logged request
    line would carry the access token."""
    import uvicorn

    guard = Guard(port=sock.getsockname()[1])
    config = uvicorn.Config(
        create_app(session, guard),
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )
    server = uvicorn.Server(config)
    if on_ready:
        on_ready(guard)
    server.run(sockets=[sock])
