"""A small threaded listener for attested sessions (one thread per peer).

A peer that fails TLS or attestation is logged with its reason and dropped;
the listener keeps serving everyone else.  Until a peer has passed
attestation it is a stranger, so what it can hold is bounded: at most
``max_sessions`` sessions at once and ``max_per_peer`` from one address
(IPv6: /64), the whole opening (TLS handshake, HELLO, EVIDENCE) within
``OPENING_TIMEOUT_S`` however slowly bytes trickle in, and opening frames of
at most ``channel.MAX_OPENING_FRAME`` bytes.

A connection over a limit takes the place of a session still opening, as
the HTTPS services' connection gate does (sgxcloud.web.connections): over
its address's limit, that address's opening waiting longest, if for more
than ``EVICTION_GRACE_S``; at ``max_sessions``, the longest-waiting opening
of the address holding most, if it would still hold more than the
newcomer's, or else any opening past the grace.  Otherwise it is closed at
once.  So strangers re-opening silent connections before the opening
timeout cannot keep the coordinator out (red team attack-cas3, finding 3,
on the nodes' port).  An attested session is never taken.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sgxcloud.cleanroom.transport import tls as tlsmod
from sgxcloud.cleanroom.transport.binding import Attester, PeerPolicy
from sgxcloud.cleanroom.transport.channel import AttestedChannel, open_server
from sgxcloud.cleanroom.transport.errors import TransportError
from sgxcloud.web.connections import EVICTION_GRACE_S, client_of

log = logging.getLogger(__name__)

Handler = Callable[[AttestedChannel], None]

OPENING_TIMEOUT_S = 30.0
"""How long a peer may take from connecting to having passed attestation."""
MAX_SESSIONS = 32
"""Sessions (opening or open) at once; a node serves one coordinator."""
MAX_PER_PEER = 8
"""Sessions from one address at once; the coordinator opens one at a time."""


_ANYONE = object()


@dataclass(eq=False)
class _Session:
    conn: socket.socket
    peer: str | None
    started: float
    opening: bool = True


class AttestedServer:
    """Accepts mutually attested TLS sessions and hands each to ``handler``."""

    def __init__(self, host: str, port: int, identity: tlsmod.TlsIdentity, role: str,
                 policy: PeerPolicy, attester: Attester, handler: Handler,
                 on_refusal: Callable[[str], None] | None = None,
                 hello_extra: dict | None = None,
                 admit: Callable[[Any, dict[str, Any]], None] | None = None,
                 max_sessions: int = MAX_SESSIONS,
                 opening_timeout: float = OPENING_TIMEOUT_S,
                 max_per_peer: int = MAX_PER_PEER) -> None:
        self.identity = identity
        self.role = role
        self.policy = policy
        self.attester = attester
        self.handler = handler
        self.on_refusal = on_refusal
        self.hello_extra = hello_extra or {}
        self.admit = admit
        self.opening_timeout = opening_timeout
        self.max_sessions = max_sessions
        self.max_per_peer = max_per_peer
        self._lock = threading.Lock()
        self._sessions: set[_Session] = set()
        self._per_peer: dict[str | None, int] = {}
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
                conn, address = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            session = self._admit(conn, client_of(address))
            if session is None:
                log.warning("session refused: too many sessions at once")
                conn.close()
                continue
            threading.Thread(target=self._session, args=(session,), daemon=True).start()

    def _admit(self, conn: socket.socket, peer: str | None) -> _Session | None:
        now = time.monotonic()
        with self._lock:
            if peer is not None and self._per_peer.get(peer, 0) >= self.max_per_peer:
                victim = self._longest_opening(now, peer)
                if victim is None:
                    return None
                self._evict(victim)
            if len(self._sessions) >= self.max_sessions:
                victim = self._from_biggest(peer) or self._longest_opening(now, _ANYONE)
                if victim is None:
                    return None
                self._evict(victim)
            session = _Session(conn, peer, now)
            self._sessions.add(session)
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            return session

    def _from_biggest(self, newcomer: str | None) -> _Session | None:
        biggest, count = max(self._per_peer.items(), key=lambda item: item[1])
        if count <= self._per_peer.get(newcomer, 0) + 1:
            return None
        return self._longest_opening(None, biggest)

    def _longest_opening(self, now: float | None, peer: object) -> _Session | None:
        """The session of ``peer`` (``_ANYONE``: of any peer) still opening longest:
        for longer than the grace unless ``now`` is None."""
        oldest: _Session | None = None
        for session in self._sessions:
            if session.opening and (peer is _ANYONE or session.peer == peer) \
                    and (now is None or now - session.started >= EVICTION_GRACE_S) \
                    and (oldest is None or session.started < oldest.started):
                oldest = session
        return oldest

    def _evict(self, session: _Session) -> None:
        """End a session still opening; its thread finds its socket shut."""
        self._forget(session)
        log.info("session opening evicted for a new connection")
        with contextlib.suppress(OSError):
            session.conn.shutdown(socket.SHUT_RDWR)

    def _forget(self, session: _Session) -> None:
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        left = self._per_peer[session.peer] - 1
        if left:
            self._per_peer[session.peer] = left
        else:
            del self._per_peer[session.peer]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        if self._thread:
            self._thread.join(timeout=5)

    def _session(self, session: _Session) -> None:
        try:
            self._attested_session(session)
        finally:
            with self._lock:
                self._forget(session)

    def _attested_session(self, session: _Session) -> None:
        try:
            tls = tlsmod.accept(session.conn, self.identity,
                                deadline=session.started + self.opening_timeout)
            channel = open_server(tls, self.role, self.policy, self.attester,
                                  self.hello_extra, self.admit)
            tls.deadline = None  # attested: the handler sets its own timeouts
            with self._lock:
                session.opening = False  # attested: never evicted
            if session not in self._sessions:  # evicted just as it passed
                channel.close()
                return
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
