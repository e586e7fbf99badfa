"""A small threaded listener for attested sessions (one thread per peer).

A peer that fails TLS or attestation is logged with its reason and dropped;
the listener keeps serving everyone else.  Sessions are bounded as the
HTTPS services' connections are (sgxcloud.web.connections), counted from the
accept: at most ``max_sessions`` at once and ``max_per_peer`` from one
address (IPv6: /64); the whole opening (TLS handshake, HELLO, EVIDENCE)
within ``OPENING_TIMEOUT_S`` however slowly bytes trickle in, and opening
frames of at most ``channel.MAX_OPENING_FRAME`` bytes.

A session *owes* the listener its next request while it is opening, and,
once attested, while it waits between requests (the handler reports this
through :meth:`AttestedChannel.next_request`); a request that has arrived is
in progress until the handler asks for the next one, and is never cut.  A
connection over a limit takes the place of a session that owes:

* over its address's limit, that address's session owing longest, if for
  more than ``EVICTION_GRACE_S``;
* at ``max_sessions``, the session owing longest (whatever its age) of the
  address holding most, if that address would still hold more than the
  newcomer's; or else any session owing for more than the grace, where a
  connection that has not sent a byte yet is past it after
  ``SILENT_GRACE_S`` (0.2 s: a peer sends its ClientHello right behind the
  TCP handshake).

Otherwise it is closed at once.  So filling a node takes as many addresses
as it has sessions, each renewed every ``EVICTION_GRACE_S`` once it has
started its opening, and every ``SILENT_GRACE_S`` while silent (red team
attack-rt6, finding 1: one silent connection from each of 32 addresses,
renewed every 1.5 s, failed 8 of 10 coordinator calls).  Neither
strangers re-opening silent connections (red team attack-cas3, finding 3)
nor attested peers staying silent (attack-rt5, finding 2: 32 simulated
coordinators from 4 addresses held a node for an hour) keep the coordinator
out.  Passing attestation buys no place: in simulated mode anyone holding
the approvals passes, on SGX anyone running the pinned coordinator build.
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
from sgxcloud.cleanroom.transport.channel import AttestedChannel, Opening, open_server
from sgxcloud.cleanroom.transport.errors import TransportError
from sgxcloud.web.connections import EVICTION_GRACE_S, SILENT_GRACE_S, client_of

log = logging.getLogger(__name__)

Handler = Callable[[AttestedChannel], None]
"""Serves one attested session.  It asks for each request with
``channel.next_request``: the session is idle (and may be taken for a
newcomer) only while it waits there."""

OPENING_TIMEOUT_S = 30.0
"""How long a peer may take from connecting to having passed attestation."""
MAX_SESSIONS = 32
"""Sessions (opening or open) at once; a node serves one coordinator."""
MAX_PER_PEER = 8
"""Sessions from one address at once; the coordinator opens one per dataset of
the provider's at most (all at once), and one to ask what the node has."""


_ANYONE = object()


@dataclass(eq=False)
class _Session:
    conn: socket.socket
    peer: str | None
    started: float
    owed_since: float
    """Since when the peer owes its next request: the accept, or the end of the
    last request.  Meaningful while :meth:`owes` holds."""
    opening: bool = True
    silent: bool = True
    """No byte has arrived yet: a full node drops it after ``SILENT_GRACE_S``."""
    busy: bool = False
    """A request has arrived and is being served: never taken."""

    def owes(self) -> bool:
        return not self.busy


class AttestedServer:
    """Accepts mutually attested TLS sessions and hands each to ``handler``."""

    def __init__(self, host: str, port: int, identity: tlsmod.TlsIdentity, role: str,
                 policy: PeerPolicy, attester: Attester, handler: Handler,
                 on_refusal: Callable[[str], None] | None = None,
                 hello_extra: dict | None = None,
                 admit: Callable[[Any, Opening], None] | None = None,
                 vouch: Callable[[Opening], None] | None = None,
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
        self.vouch = vouch
        self.opening_timeout = opening_timeout
        self.max_sessions = max_sessions
        self.max_per_peer = max_per_peer
        self._lock = threading.Lock()
        self._sessions: set[_Session] = set()
        self._per_peer: dict[str | None, int] = {}
        self.evicted = 0
        """Sessions taken for newcomers (openings and idle attested ones)."""
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
                victim = self._longest_owing(now, peer)
                if victim is None:
                    return None
                self._evict(victim)
            if len(self._sessions) >= self.max_sessions:
                victim = self._from_biggest(peer) \
                    or self._longest_owing(now, _ANYONE, SILENT_GRACE_S)
                if victim is None:
                    return None
                self._evict(victim)
            session = _Session(conn, peer, now, now)
            self._sessions.add(session)
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            return session

    def _from_biggest(self, newcomer: str | None) -> _Session | None:
        """The place of the session owing longest (any age) of the address
        holding most, if it would still hold more than the newcomer's."""
        biggest, count = max(self._per_peer.items(), key=lambda item: item[1])
        if count <= self._per_peer.get(newcomer, 0) + 1:
            return None
        return self._longest_owing(None, biggest)

    def _longest_owing(self, now: float | None, peer: object,
                       silent_grace: float | None = None) -> _Session | None:
        """The session of ``peer`` (``_ANYONE``: of any peer) owing its request
        longest (opening, or attested and idle): for longer than the grace
        unless ``now`` is None (``silent_grace``, if given, for a connection
        that has not sent a byte).  A request in progress is never chosen."""
        oldest: _Session | None = None
        for session in self._sessions:
            grace = silent_grace if session.silent and silent_grace is not None \
                else EVICTION_GRACE_S
            if session.owes() and (peer is _ANYONE or session.peer == peer) \
                    and (now is None or now - session.owed_since >= grace) \
                    and (oldest is None or session.owed_since < oldest.owed_since):
                oldest = session
        return oldest

    def _evict(self, session: _Session) -> None:
        """End a session that owes its request; its thread finds its socket shut."""
        self._forget(session)
        self.evicted += 1
        log.info("%s session evicted for a new connection",
                 "opening" if session.opening else "idle attested")
        with contextlib.suppress(OSError):
            session.conn.shutdown(socket.SHUT_RDWR)

    def _activity(self, session: _Session, busy: bool) -> bool:
        """The handler's report: a request arrived (``busy``) or the session waits
        for the next.  False when the session was taken meanwhile."""
        with self._lock:
            if session not in self._sessions:
                return False
            session.busy = busy
            if not busy:
                session.owed_since = time.monotonic()
            return True

    def _forget(self, session: _Session) -> None:
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        left = self._per_peer[session.peer] - 1
        if left:
            self._per_peer[session.peer] = left
        else:
            del self._per_peer[session.peer]

    def _taken(self, session: _Session) -> bool:
        """Whether ``session`` was evicted (its failure is then no refusal)."""
        with self._lock:
            return session not in self._sessions

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

    def _first_byte(self, session: _Session) -> bool:
        """Wait (within the opening deadline) for the peer's first byte, without
        reading it; then the session is no longer silent.  False: the peer left,
        was evicted or said nothing in time."""
        left = session.started + self.opening_timeout - time.monotonic()
        try:
            session.conn.settimeout(max(left, 0.01))
            first = session.conn.recv(1, socket.MSG_PEEK)
        except OSError:  # timed out, reset, or shut by an eviction
            first = b""
        if not first:
            return False
        with self._lock:
            session.silent = False
        return True

    def _attested_session(self, session: _Session) -> None:
        if not self._first_byte(session):
            if not self._taken(session):
                log.info("session closed: no byte before it left or its deadline")
            session.conn.close()
            return
        try:
            tls = tlsmod.accept(session.conn, self.identity,
                                deadline=session.started + self.opening_timeout)
            channel = open_server(tls, self.role, self.policy, self.attester,
                                  self.hello_extra, self.admit, self.vouch)
            tls.deadline = None  # attested: the handler sets its own timeouts
            with self._lock:
                session.opening = False  # attested: owes its first request from now
                session.owed_since = time.monotonic()
                taken = session not in self._sessions
            if taken:  # evicted just as it passed
                channel.close()
                return
        except TransportError as exc:
            if self._taken(session):
                return
            log.warning("session refused: %s", exc)
            if self.on_refusal:
                self.on_refusal(str(exc))
            return
        channel.activity = lambda busy: self._activity(session, busy)
        try:
            self.handler(channel)
        except TransportError as exc:
            if self._taken(session):
                return
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
