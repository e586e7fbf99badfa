"""Every connection a service accepts is bounded from accept on, before any TLS work.

uvicorn counts a connection only once its TLS handshake is over, and the
event loop gives a handshake 60 s: 15,000 silent TCP sockets grew the CAS by
660 MiB and nothing refused them (red team attack-cas3, finding 4).  And one
address could take every slot: 300 connections sending a request head a byte
a second, re-opened before the head deadline, left the CAS answering 503 to
everyone else (finding 3).

So the server is started without TLS and each accepted TCP connection comes
here first (:class:`ConnectionGate`, the protocol factory given to uvicorn):

* it is counted at once, against the service's limit (``max_connections``)
  and its client's (``max_connections_per_client``, per IPv4 address or IPv6
  /64; 0: off, for a service behind a proxy that hides addresses);
* over its client's limit, it takes the slot of that client's connection that
  has owed its request longest, if for longer than :data:`EVICTION_GRACE_S`
  (a handshake not finished, a head or body not all sent, a keep-alive
  connection idle);
* at the service's limit, it takes a slot from the client holding most
  connections (its connection waiting longest, whatever its age) if that
  client would still hold more than the newcomer's; or else that of the
  connection that has owed its request longest, past the grace, where a
  connection that has not sent a byte yet is past it after
  :data:`SILENT_GRACE_S`;
* a connection that finds no slot is closed at once: no TLS object is made;
* admitted, its TLS handshake (``loop.start_tls``) must finish within
  ``handshake_timeout_s``; then the HTTP protocol takes over the connection,
  which keeps its slot until it is lost.

Eviction is what holds against many addresses.  A connection that is not
being answered keeps its slot only while nobody with a smaller share needs
it: to keep a newcomer out, an attacker must hold the service with as many
addresses as it has slots (one connection each), and even then renew each
connection every :data:`EVICTION_GRACE_S` rather than every head timeout,
and each silent one every :data:`SILENT_GRACE_S` (red team attack-rt6,
finding 1: 560 addresses renewing silent connections every 1.5 s cost the
CAS 8 of 39 enclave round trips).  Only a connection that has started its
opening (sent a byte) keeps the longer grace.
A connection whose request has arrived whole is never evicted.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sgxcloud.web.balance import ConnectionBalancer

log = logging.getLogger(__name__)

EVICTION_GRACE_S = 2.0
"""How long a connection may owe its request before a new connection may take its slot.

A legitimate client sends its head within milliseconds of connecting (or of
its previous answer); two seconds leave room for a slow network and a
client that works between two requests on one connection."""

SILENT_GRACE_S = 0.2
"""How long a connection that has not sent a byte keeps its slot in a full service.

A client sends its first bytes (the TLS ClientHello) right behind the TCP
handshake, within milliseconds of the accept; a connection still silent
after this holds only a descriptor and costs nothing to drop.  Without it,
one silent connection per address, renewed every :data:`EVICTION_GRACE_S`,
held a node from 32 addresses (red team attack-rt6, finding 1)."""

REPORT_EVERY_S = 10.0
"""Refused and evicted connections are logged as counts, at most this often."""

TRIM_AFTER_CLOSED = 256
"""Connections closed since the last trim of the C heap that call for another."""
TRIM_EVERY_S = 10.0
"""The C heap is trimmed at most this often."""


def _heap_trimmer() -> Callable[[], None] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (musl, macOS).

    Each TLS connection allocates its buffers (OpenSSL's, the loop's) from the
    C heap; when many close at once, glibc keeps the freed pages (fragmented,
    below the heap's top) and the process's RSS never comes down: a wave of
    4,000 unfinished handshakes left 486 MiB, 85 MiB after a trim.  Inside an
    enclave the heap is the EPC, fixed at build time.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


_trim_heap = _heap_trimmer()


def tls_context(certfile: str, keyfile: str, *, ca_certs: str | None = None,
                cert_reqs: int = ssl.CERT_NONE) -> ssl.SSLContext:
    """The server TLS context uvicorn would make from its ``ssl_*`` options."""
    from uvicorn.config import SSL_PROTOCOL_VERSION, create_ssl_context

    return create_ssl_context(certfile, keyfile, None, SSL_PROTOCOL_VERSION, cert_reqs,
                              ca_certs, "TLSv1")


def client_of(peer: Any) -> str | None:
    """Whose connection this is, for the per-client limit: the IPv4 address, or the
    IPv6 /64 (one host gets a /64); None when the peer has no IP address."""
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return f"{int(address) >> 64:x}::/64"
    return str(address)


class Slot:
    """One accepted connection's place in its gate, from accept until it is lost."""

    __slots__ = ("client", "close", "gate", "handshake", "owed_since", "protocol", "silent")

    def __init__(self, gate: ConnectionGate, client: str | None, now: float) -> None:
        self.gate = gate
        self.client = client
        self.close: Callable[[], None] = lambda: None
        """Ends the connection at once, whatever stage it is in (set by each stage)."""
        self.protocol: Any = None  # the HTTP protocol, once the TLS layer is made
        self.handshake: asyncio.Task[None] | None = None
        self.owed_since = now
        """Since when the client owes a (complete) request: accept, or the end of
        the last response.  Meaningful while :meth:`owes` holds."""
        self.silent = False
        """No byte has arrived yet (set while the gate waits for the first)."""

    def owes(self) -> bool:
        """Whether the connection waits for its client: its first bytes, the TLS
        handshake, a request head or body not all received, or the next request."""
        protocol = self.protocol
        if protocol is None or self.handshake is not None:
            return True
        cycle = protocol.cycle
        return cycle is None or cycle.response_complete or cycle.more_body

    def release(self) -> None:
        self.gate.release(self)


class ConnectionGate:
    """uvicorn's protocol factory (its ``http`` option): admits or refuses each
    accepted connection, runs its TLS handshake, hands it to ``protocol_class``.

    One per server (per process): the counts are this process's connections.
    """

    def __init__(self, protocol_class: type, *, max_connections: int,
                 max_per_client: int, handshake_timeout_s: float,
                 tls: ssl.SSLContext | None, grace_s: float = EVICTION_GRACE_S,
                 silent_grace_s: float = SILENT_GRACE_S) -> None:
        self.protocol_class = protocol_class
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.handshake_timeout_s = handshake_timeout_s
        self.tls = tls
        self.grace_s = grace_s
        self.silent_grace_s = silent_grace_s
        self.slots: set[Slot] = set()
        self.per_client: dict[str, int] = {}
        self.refused = 0
        self.evicted = 0
        self._reported = (0, 0)
        self._report_at = 0.0
        self._closed_since_trim = 0
        self._trim_at = 0.0
        self._trim_timer: asyncio.TimerHandle | None = None
        self.balancer: ConnectionBalancer | None = None
        self.state: Any = None  # the server state of balanced connections
        self.shed = 0
        self._shedding: Slot | None = None
        self.observe: Callable[[str], None] = lambda _outcome: None
        """Told of each connection ``refused``, ``evicted``, ``handed_over`` to a
        sibling worker or ``shed`` (closed after its answer to even the workers
        out): a service's metrics count them."""
        self._config: Any = None

    def __call__(self, *, config: Any, server_state: Any, app_state: Any,
                 _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        loop = _loop or asyncio.get_event_loop()
        if self.balancer is not None:  # one state for accepted and handed-over connections
            return _Accepted(self, self._make_balanced, loop)

        def make() -> Any:
            return self.protocol_class(config=config, server_state=server_state,
                                       app_state=app_state, _loop=_loop)
        return _Accepted(self, make, loop)

    @property
    def held(self) -> int:
        return len(self.slots)

    # -- between worker processes (web.balance) -----------------------------------

    def balance(self, balancer: ConnectionBalancer, config: Any) -> None:
        """Even out connections with the sibling workers of ``balancer``'s
        directory (call before serving; :meth:`start_balancing` in the worker's
        event loop).  The gate then keeps the server state of its connections."""
        from sgxcloud.web.balance import WorkerServerState

        self.balancer = balancer
        self.state = WorkerServerState(config)
        self._config = config

    def start_balancing(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.balancer is not None
        self.balancer.start(loop, lambda sock: self.take(sock, self._make_balanced, loop))
        self.balancer.publish(len(self.slots))

    async def drain(self, timeout_s: float) -> None:
        """What uvicorn's server does at shutdown for the connections it knows:
        ask each to close once its response is sent, wait for them and their
        requests (at most ``timeout_s``).  Handovers stop first."""
        if self.balancer is None or self.state is None:
            return
        self.balancer.stop()
        for connection in list(self.state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self.state.connections or self.state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.05)

    def should_shed(self, slot: Slot) -> bool:
        """Whether the request just arrived on ``slot`` should be answered with
        ``Connection: close`` so that its client reconnects to a sibling worker:
        when this worker holds two or more connections above the sibling holding
        fewest, one connection at a time (web.balance)."""
        if self.balancer is None or self._shedding in self.slots:
            return False
        fewest = self.balancer.fewest()
        if fewest is None or len(self.slots) - fewest < 2:
            return False
        self._shedding = slot
        self.shed += 1
        self.observe("shed")
        return True

    def _make_balanced(self) -> Any:
        return self.protocol_class(config=self._config, server_state=self.state,
                                   app_state={}, _loop=None)

    def arrived(self, sock: socket.socket, make: Callable[[], Any],
                loop: asyncio.AbstractEventLoop) -> None:
        """A connection this process accepted: handed to a sibling worker holding
        fewer, or taken here."""
        if self.balancer is not None and self.balancer.hand_over(sock, len(self.slots)):
            sock.close()
            self.observe("handed_over")
            return
        self.take(sock, make, loop)

    def take(self, sock: socket.socket, make: Callable[[], Any],
             loop: asyncio.AbstractEventLoop) -> None:
        """Admit a connection (accepted here or handed over), or close it."""
        try:
            peer = sock.getpeername()
        except OSError:  # already gone
            sock.close()
            return
        slot = self.admit(client_of(peer), loop.time())
        if self.balancer is not None:
            self.balancer.publish(len(self.slots))
        if slot is None:
            sock.close()  # before any TLS work: no SSL object, no buffers
            return
        _open(slot, sock, make, loop)

    def admit(self, client: str | None, now: float) -> Slot | None:
        """A slot for a just-accepted connection of ``client``, or None: close it."""
        if client is not None and self.max_per_client \
                and self.per_client.get(client, 0) >= self.max_per_client:
            victim = self._longest_owing(now, client)
            if victim is None:
                return self._refuse(now)
            self._evict(victim, now)
        if len(self.slots) >= self.max_connections:
            victim = self._from_biggest(client) \
                or self._longest_owing(now, None, self.silent_grace_s)
            if victim is None:
                return self._refuse(now)
            self._evict(victim, now)
        slot = Slot(self, client, now)
        self.slots.add(slot)
        if client is not None:
            self.per_client[client] = self.per_client.get(client, 0) + 1
        return slot

    def release(self, slot: Slot) -> None:
        if slot not in self.slots:
            return
        self.slots.discard(slot)
        if self.balancer is not None:
            self.balancer.publish(len(self.slots))
        if slot.client is not None:
            left = self.per_client[slot.client] - 1
            if left:
                self.per_client[slot.client] = left
            else:
                del self.per_client[slot.client]
        self._closed_since_trim += 1
        if self._closed_since_trim >= TRIM_AFTER_CLOSED and self._trim_timer is None \
                and _trim_heap is not None:
            loop = asyncio.get_running_loop()
            # A second after the wave (or when the last trim is old enough).
            self._trim_timer = loop.call_later(max(self._trim_at - loop.time(), 1.0),
                                               self._trim, loop)

    def _trim(self, loop: asyncio.AbstractEventLoop) -> None:
        self._trim_timer = None
        self._closed_since_trim = 0
        self._trim_at = loop.time() + TRIM_EVERY_S
        if _trim_heap is not None:
            _trim_heap()

    def _from_biggest(self, newcomer: str | None) -> Slot | None:
        """A slot for a newcomer to a full service, fairly: the connection waiting
        longest (any age) of the client holding most, if it would still hold
        more than the newcomer's client.  So a client with few connections gets
        in at once, and filling the service takes as many addresses as slots."""
        if not self.per_client:
            return None
        biggest, count = max(self.per_client.items(), key=lambda item: item[1])
        mine = self.per_client.get(newcomer, 0) if newcomer is not None else 0
        if count <= mine + 1:  # taking one would not leave it holding more
            return None
        return self._longest_owing(None, biggest)

    def _longest_owing(self, now: float | None, client: str | None,
                       silent_grace_s: float | None = None) -> Slot | None:
        """The connection (of ``client``, if given) that has owed its request
        longest: longer than the grace unless ``now`` is None (``silent_grace_s``,
        if given, for a connection that has not sent a byte)."""
        oldest: Slot | None = None
        for slot in self.slots:
            grace = silent_grace_s if slot.silent and silent_grace_s is not None \
                else self.grace_s
            if (client is None or slot.client == client) and slot.owes() \
                    and (now is None or now - slot.owed_since >= grace) \
                    and (oldest is None or slot.owed_since < oldest.owed_since):
                oldest = slot
        return oldest

    def _evict(self, victim: Slot, now: float) -> None:
        self.release(victim)  # now: its connection_lost comes later
        victim.close()
        self.evicted += 1
        self.observe("evicted")
        self._report(now)

    def _refuse(self, now: float) -> None:
        self.refused += 1
        self.observe("refused")
        self._report(now)
        return None

    def _report(self, now: float) -> None:
        if now < self._report_at:
            return
        self._report_at = now + REPORT_EVERY_S
        refused, evicted = self.refused - self._reported[0], self.evicted - self._reported[1]
        self._reported = (self.refused, self.evicted)
        log.warning("connection limits: %d connections refused, %d slow ones evicted "
                    "(%d held, at most %d, %d per client)", refused, evicted,
                    len(self.slots), self.max_connections, self.max_per_client)


class _Accepted(asyncio.Protocol):
    """A just-accepted TCP connection, handed to the gate on a duplicate of its
    descriptor before a byte of it is read.

    The hand-over goes through ``loop.connect_accepted_socket`` (:func:`_open`):
    this transport is closed from ``connection_made`` (the duplicate keeps the
    connection open), so the ClientHello waits in the kernel for the TLS
    transport.  (``loop.start_tls`` on this transport would race with the
    first read: uvloop starts reading after ``connection_made`` whatever the
    protocol asked.)
    """

    def __init__(self, gate: ConnectionGate, make: Callable[[], Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.gate = gate
        self.make = make
        self.loop = loop

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def,override]
        if transport.get_extra_info("sslcontext") is not None:
            # The server itself was given TLS (ssl_certfile...): the handshake
            # already ran uncounted.  uvicorn_options(tls=...) is the way.
            log.error("connection gate: TLS must be given to uvicorn_options, not to uvicorn")
            transport.abort()
            return
        try:
            sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        except OSError as exc:  # out of descriptors: refused like any other
            log.debug("accepted connection not handed over: %s", exc)
            self.gate._refuse(self.loop.time())
            transport.abort()
            return
        transport.abort()  # the duplicate holds the connection; nothing was read
        self.gate.arrived(sock, self.make, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # the raw transport closed by connection_made: the slot lives on


def _open(slot: Slot, sock: socket.socket, make: Callable[[], Any],
          loop: asyncio.AbstractEventLoop) -> None:
    """An admitted connection: once its first bytes arrive, its TLS handshake
    (within the gate's deadline for the whole opening), then ``make``'s HTTP
    protocol.  Until the socket is readable only a descriptor and a reader are
    held: a silent connection makes no TLS object (~55 KiB with uvloop's TLS
    buffers)."""
    gate = slot.gate
    if gate.tls is None:
        _serve(slot, sock, make, loop)
        return
    fd = sock.fileno()

    def drop() -> None:
        loop.remove_reader(fd)
        deadline.cancel()
        sock.close()

    def silent_too_long() -> None:
        slot.release()
        drop()

    def readable() -> None:
        slot.silent = False
        loop.remove_reader(fd)
        deadline.cancel()
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            first = b"?"
        except OSError:
            first = b""
        if not first:  # closed before a byte: no TLS object for it either
            slot.release()
            sock.close()
            return
        _serve(slot, sock, make, loop)

    deadline = loop.call_later(gate.handshake_timeout_s, silent_too_long)
    slot.silent = True
    loop.add_reader(fd, readable)
    slot.close = drop


def _serve(slot: Slot, sock: socket.socket, make: Callable[[], Any],
           loop: asyncio.AbstractEventLoop) -> None:
    task = loop.create_task(_connect(slot, sock, make, loop))
    slot.handshake = task
    slot.close = task.cancel  # connect_accepted_socket closes the socket


async def _connect(slot: Slot, sock: socket.socket, make: Callable[[], Any],
                   loop: asyncio.AbstractEventLoop) -> None:
    def protocol() -> Any:
        made = make()
        made.gate_slot = slot
        made.opened_at = slot.owed_since
        slot.protocol = made
        return made

    gate = slot.gate
    tls = gate.tls
    # The opening as a whole (first bytes, handshake) within the deadline.
    left = gate.handshake_timeout_s - (loop.time() - slot.owed_since)
    try:
        transport, _ = await loop.connect_accepted_socket(
            protocol, sock, ssl=tls,
            ssl_handshake_timeout=max(left, 0.1) if tls is not None else None)
    except (OSError, asyncio.CancelledError) as exc:
        # The handshake timed out or failed, the client left, or the slot was
        # taken by another connection (evicted: this task cancelled).
        log.debug("connection closed before its TLS handshake ended: %s", exc)
        sock.close()
        slot.release()
        return
    finally:
        slot.handshake = None
    slot.close = transport.abort
    if slot not in gate.slots:  # evicted as the handshake ended
        transport.abort()


class GatedProtocol:
    """Mixed into the HTTP protocols: gives the connection's slot back when it is
    lost, and notes when its client starts to owe the next request."""

    gate_slot: Slot | None = None
    opened_at: float | None = None
    loop: asyncio.AbstractEventLoop

    def shed_if_unbalanced(self) -> None:
        """Close this connection after the response to the request just arrived
        if the gate wants it elsewhere (:meth:`ConnectionGate.should_shed`)."""
        slot, cycle = self.gate_slot, getattr(self, "cycle", None)
        if slot is not None and cycle is not None and cycle.keep_alive \
                and slot.gate.should_shed(slot):
            cycle.keep_alive = False  # uvicorn: "connection: close", then closes

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self.gate_slot is not None:
            self.gate_slot.owed_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gate_slot is not None:
            self.gate_slot.release()
            self.gate_slot = None
        super().connection_lost(exc)  # type: ignore[misc]

