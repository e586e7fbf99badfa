"""A small threaded listener for attested sessions (one thread per peer).

A peer that fails TLS or attestation is logged with its reason and dropped;
the listener keeps serving everyone else.  Until a peer has passed
attestation it is a stranger, so what it can hold is bounded: at most
``max_sessions`` sessions at once (more connections are closed at once), the
whole opening (TLS handshake, HELLO, EVIDENCE) within ``OPENING_TIMEOUT_S``
however slowly bytes trickle in, and opening frames of at most
``channel.MAX_OPENING_FRAME`` bytes.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sgxcloud.cleanroom.transport import tls as tlsmod
from sgxcloud.cleanroom.transport.binding import Attester, PeerPolicy
from sgxcloud.cleanroom.transport.channel import AttestedChannel, open_server
from sgxcloud.cleanroom.transport.errors import TransportError

log = logging.getLogger(__name__)

Handler = Callable[[AttestedChannel], None]

OPENING_TIMEOUT_S = 30.0
"""How long a peer may take from connecting to having passed attestation."""
MAX_SESSIONS = 32
"""Sessions (opening or open) at once; a node serves one coordinator."""


class AttestedServer:
    """Accepts mutually attested TLS sessions and hands each to ``handler``."""

    def __init__(self, host: str, port: int, identity: tlsmod.TlsIdentity, role: str,
                 policy: PeerPolicy, attester: Attester, handler: Handler,
                 on_refusal: Callable[[str], None] | None = None,
                 hello_extra: dict | None = None,
                 admit: Callable[[Any, dict[str, Any]], None] | None = None,
                 max_sessions: int = MAX_SESSIONS,
                 opening_timeout: float = OPENING_TIMEOUT_S) -> None:
        self.identity = identity
        self.role = role
        self.policy = policy
        self.attester = attester
        self.handler = handler
        self.on_refusal = on_refusal
        self.hello_extra = hello_extra or {}
        self.admit = admit
        self.opening_timeout = opening_timeout
        self._slots = threading.BoundedSemaphore(max_sessions)
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def serve_forever(self) -> None:
        self._sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            if not self._slots.acquire(blocking=False):
                log.warning("session refused: too many sessions at once")
                conn.close()
                continue
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        if self._thread:
            self._thread.join(timeout=5)

    def _session(self, conn: socket.socket) -> None:
        try:
            self._attested_session(conn)
        finally:
            self._slots.release()

    def _attested_session(self, conn: socket.socket) -> None:
        try:
            tls = tlsmod.accept(conn, self.identity,
                                deadline=time.monotonic() + self.opening_timeout)
            channel = open_server(tls, self.role, self.policy, self.attester,
                                  self.hello_extra, self.admit)
            tls.deadline = None  # attested: the handler sets its own timeouts
        except TransportError as exc:
            log.warning("session refused: %s", exc)
            if self.on_refusal:
                self.on_refusal(str(exc))
            return
        try:
            self.handler(channel)
        except TransportError as exc:
            log.warning("session ended: %s", exc)
            if self.on_refusal:
                self.on_refusal(str(exc))
        except Exception as exc:
            # A bug must not take the listener down nor leak data through a
            # traceback: name the exception type only, tell the peer, carry on.
            log.error("session failed: internal error (%s)", type(exc).__name__)
            channel.refuse("internal", f"internal error ({type(exc).__name__})")
        finally:
            channel.close()
