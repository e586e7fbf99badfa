"""Every connection a service accepts is bounded from accept on, before any TLS work.

uvicorn counts a connection only once its TLS handshake is over, and the
event loop gives a handshake 60 s: 15,000 silent TCP sockets grew the CAS by
660 MiB and nothing refused them (red team attack-cas3, finding 4).  And one
address could take every slot: 300 connections sending a request head a byte
a second, re-opened before the head deadline, left the CAS answering 503 to
everyone else (finding 3).

So the server is started without TLS and each accepted TCP connection comes
here first (:class:`ConnectionGate`, the protocol factory given to uvicorn),
which keeps two kinds of places (:class:`Places`):

* a connection is *unproven* from its accept until its TLS handshake has
  completed, whatever bytes it has sent, and takes one of
  :data:`UNPROVEN_PER_PLACE` x ``max_connections`` places for unproven
  connections: it holds a descriptor, and a TLS object once it has sent a
  byte, but no request;
* once its handshake has completed it is *proven* and takes one of the
  ``max_connections`` places, before its first request is read (or is
  closed: no place);
* a client (IPv4 address, IPv6 /64; ``max_connections_per_client``, 0: off,
  for a service behind a proxy that hides addresses) over its limit takes
  the place of its own connection that has owed its request longest, if for
  longer than :data:`EVICTION_GRACE_S`;
* at either limit, a newcomer takes a place from the client holding most of
  that kind (its connection waiting longest, whatever its age) if that
  client would still hold more than the newcomer's; or else, among unproven
  connections, the oldest one past :data:`UNPROVEN_GRACE_S` (1 s, a TLS 1.3
  handshake over a 900 ms round trip; :data:`SILENT_GRACE_S` if it has not
  sent a byte), and among proven ones the one waiting longest for its first
  request to arrive whole, whatever its age (a client sends it right behind
  its handshake), or else the one that has owed its request longest past
  :data:`EVICTION_GRACE_S` (a keep-alive connection idle, or a later
  request's head or body not all sent);
* a connection that finds no unproven place is closed at once: no TLS
  object is made; its TLS handshake (``loop.start_tls``) must finish within
  ``handshake_timeout_s`` of the accept.

Eviction is what holds against many addresses.  A connection that is not
being answered keeps its place only while nobody with a smaller share needs
it: to keep a newcomer out, an attacker must hold every unproven place, one
connection per address, each renewed within a second.  A completed
handshake buys no grace either: a connection whose first request has not
arrived whole gives way to the next newcomer, the oldest first, so a client
is kept out only while more handshakes complete than there are proven
places in the time its own first request takes to arrive (before, each held
:data:`EVICTION_GRACE_S`: completed handshakes left silent from 70 addresses,
44 a second, made 56 of 73 requests to a coordinator with 64 places fail,
red team attack-rt8, finding 3).  Sending bytes buys nothing: one byte of a
ClientHello per connection, renewed every 1.5 s, kept the 2 s grace of a
connection "that has started", and 600 addresses cost the CAS 23 of 120
enclave attestations (red team attack-rt7, finding 2; silent ones,
attack-rt6 finding 1, were the same attack without the byte).
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

UNPROVEN_GRACE_S = 1.0
"""How long a connection whose TLS handshake has not completed keeps its place
in a full service, whatever bytes it has sent.

A TLS 1.3 handshake completes at the server one round trip after the accept
(its flight out, the client's Finished back), plus a few milliseconds of
CPU: 0.3 s for a client 300 ms away, so 1 s leaves room for a client up to
~900 ms away, or for one lost segment resent at a 300 ms round trip.  A
connection that has only sent bytes has proven nothing: one byte of a
ClientHello (0x16), renewed every 1.5 s from 32 addresses, kept a node's
coordinator out (red team attack-rt7, finding 2)."""

UNPROVEN_PER_PLACE = 4
"""Places for unproven connections (handshake not completed) per place for
proven ones, in a :class:`ConnectionGate`: an unproven connection holds a
descriptor (~3 KiB), and once it has sent a byte a TLS object (~55 KiB), but
no request, so filling a service takes this many times more addresses."""

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


def tls_context(
    certfile: str, keyfile: str, *, ca_certs: str | None = None, cert_reqs: int = ssl.CERT_NONE
) -> ssl.SSLContext:
    """The server TLS context uvicorn would make from its ``ssl_*`` options."""
    from uvicorn.config import SSL_PROTOCOL_VERSION, create_ssl_context

    return create_ssl_context(
        certfile, keyfile, None, SSL_PROTOCOL_VERSION, cert_reqs, ca_certs, "TLSv1"
    )


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


class Places:
    """Which connections hold a place, and which gives way to a newcomer: the
    rules a :class:`ConnectionGate` (CAS, coordinator) and a node's listener
    (``cleanroom.transport.server``) share.

    A connection is *unproven* from its accept until its TLS handshake has
    completed, whatever bytes it has sent (one byte of a ClientHello costs
    nothing: red team attack-rt7, finding 2), and *proven* after.  Each kind
    has its own places:

    * ``max_unproven`` for unproven ones, which are cheap (no thread, no
      request parsed): a newcomer at the limit takes the place of the client
      holding most unproven ones (its oldest), if that client would still
      hold more than the newcomer's, or else of the oldest unproven
      connection older than ``unproven_grace_s`` (``silent_grace_s`` for one
      that has not sent a byte);
    * ``max_proven`` for proven ones: a connection whose handshake completes
      at the limit takes the place of the client holding most proven ones
      (its connection owing longest, any age), if that client would still
      hold more than this one's, or else of the proven connection whose
      peer has waited longest without sending its first message whole
      (``unheard()``: a request; a node's HELLO and EVIDENCE), any age, or
      else of the proven connection owing its request longest, past
      ``grace_s``; with no such place it is closed.

    A client over ``max_per_client`` (all its connections) takes the place of
    its own connection owing longest past ``grace_s``, or is closed.  A request
    in progress (:meth:`owes` false) is never taken.

    A place is any object with ``client``, ``owed_since`` (accept, or end of
    the last answer), ``silent``, ``proven``, ``owes()`` and ``unheard()``; ``evict(place)``
    ends one taken for a newcomer (already forgotten here).
    """

    def __init__(
        self,
        *,
        max_proven: int,
        max_unproven: int,
        max_per_client: int,
        evict: Callable[[Any], None],
        grace_s: float = EVICTION_GRACE_S,
        unproven_grace_s: float = UNPROVEN_GRACE_S,
        silent_grace_s: float = SILENT_GRACE_S,
    ) -> None:
        self.max_proven = max_proven
        self.max_unproven = max_unproven
        self.max_per_client = max_per_client
        self.grace_s = grace_s
        self.unproven_grace_s = unproven_grace_s
        self.silent_grace_s = silent_grace_s
        self._evict = evict
        self.unproven: dict[Any, None] = {}
        """In accept order: the oldest first."""
        self.proven: set[Any] = set()
        self.per_client: dict[str, int] = {}
        self._unproven_of: dict[str, int] = {}
        self._proven_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.unproven) + len(self.proven)

    def __contains__(self, place: Any) -> bool:
        return place in self.proven or place in self.unproven

    def admit(self, place: Any, now: float) -> bool:
        """An unproven place for a just-accepted connection, or False: close it."""
        client = place.client
        if (
            client is not None
            and self.max_per_client
            and self.per_client.get(client, 0) >= self.max_per_client
        ):
            victim = self._owing_longest(now, client, grace=self.grace_s)
            if victim is None:
                return False
            self._take(victim)
        if len(self.unproven) >= self.max_unproven:
            victim = self._from_biggest(
                self._unproven_of, client, self.unproven
            ) or self._oldest_unproven(now)
            if victim is None:
                return False
            self._take(victim)
        self.unproven[place] = None
        place.proven = False
        _add(self._unproven_of, client, 1)
        _add(self.per_client, client, 1)
        return True

    def prove(self, place: Any, now: float) -> bool:
        """``place`` completed its TLS handshake: a proven place for it, or False
        (it is forgotten: close it)."""
        if place not in self.unproven:
            return False  # taken meanwhile
        client = place.client
        del self.unproven[place]
        _add(self._unproven_of, client, -1)
        if len(self.proven) >= self.max_proven:
            victim = (
                self._from_biggest(self._proven_of, client, self.proven)
                or self._oldest_unheard()
                or self._owing_longest(now, None, self.proven)
            )
            if victim is None:
                _add(self.per_client, client, -1)
                return False
            self._take(victim)
        self.proven.add(place)
        place.proven = True
        _add(self._proven_of, client, 1)
        return True

    def forget(self, place: Any) -> bool:
        """The connection is gone; False if it held no place (already taken)."""
        if place in self.unproven:
            del self.unproven[place]
            _add(self._unproven_of, place.client, -1)
        elif place in self.proven:
            self.proven.discard(place)
            _add(self._proven_of, place.client, -1)
        else:
            return False
        _add(self.per_client, place.client, -1)
        return True

    def _take(self, victim: Any) -> None:
        self.forget(victim)
        self._evict(victim)

    def _grace(self, place: Any) -> float:
        if place.proven:
            return self.grace_s
        return self.silent_grace_s if place.silent else self.unproven_grace_s

    def _from_biggest(self, counts: dict[str, int], newcomer: str | None, pool: Any) -> Any:
        """The place owing longest (any age) in ``pool`` of the client holding
        most there, if it would still hold more than the newcomer's."""
        if not counts:
            return None
        biggest, count = max(counts.items(), key=lambda item: item[1])
        mine = counts.get(newcomer, 0) if newcomer is not None else 0
        if count <= mine + 1:  # taking one would not leave it holding more
            return None
        oldest = None
        for place in pool:  # the unproven in accept order: the first is the oldest
            if (
                place.client == biggest
                and place.owes()
                and (oldest is None or place.owed_since < oldest.owed_since)
            ):
                oldest = place
                if pool is self.unproven:
                    break
        return oldest

    def _oldest_unheard(self) -> Any:
        """The proven connection that has waited longest for its peer's first
        message (a request, a HELLO) to arrive whole, whatever its age: a
        completed handshake buys no grace (red team attack-rt8, finding 3)."""
        oldest = None
        for place in self.proven:
            if place.unheard() and (oldest is None or place.owed_since < oldest.owed_since):
                oldest = place
        return oldest

    def _oldest_unproven(self, now: float) -> Any:
        """The oldest unproven connection past its grace (the silent grace for
        one that has sent nothing)."""
        for place in self.unproven:
            age = now - place.owed_since
            if age < min(self.silent_grace_s, self.unproven_grace_s):
                return None  # the rest are younger still
            if age >= self._grace(place):
                return place
        return None

    def _owing_longest(
        self, now: float, client: str | None, pool: Any = None, grace: float | None = None
    ) -> Any:
        """The connection (of ``client``, if given; in ``pool``, if given, else
        any) owing its request longest, past ``grace`` (the grace of its kind
        if None)."""
        oldest = None
        for place in pool if pool is not None else (*self.unproven, *self.proven):
            if (
                (client is None or place.client == client)
                and place.owes()
                and now - place.owed_since >= (self._grace(place) if grace is None else grace)
                and (oldest is None or place.owed_since < oldest.owed_since)
            ):
                oldest = place
        return oldest


def _add(counts: dict[str, int], client: str | None, n: int) -> None:
    if client is None:
        return
    left = counts.get(client, 0) + n
    if left > 0:
        counts[client] = left
    else:
        counts.pop(client, None)


class Slot:
    """One accepted connection's place in its gate, from accept until it is lost."""

    __slots__ = (
        "client",
        "close",
        "gate",
        "handshake",
        "heard",
        "owed_since",
        "protocol",
        "proven",
        "silent",
    )

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
        self.proven = False
        """Its TLS handshake has completed (set by :class:`Places`)."""
        self.heard = False
        """A request of its client's has arrived whole (set by :meth:`unheard`)."""

    def unheard(self) -> bool:
        """Whether no request has arrived whole on this connection yet: a client
        sends its first request right behind its handshake, so until then the
        connection has proven nothing but a handshake and gives way, the oldest
        first, to a newcomer at a full service (:class:`Places`)."""
        if self.heard:
            return False
        protocol = self.protocol
        if protocol is None or self.handshake is not None:
            return True
        cycle = protocol.cycle
        if cycle is None or (cycle.more_body and not cycle.response_complete):
            return True
        self.heard = True
        return False

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

    def __init__(
        self,
        protocol_class: type,
        *,
        max_connections: int,
        max_per_client: int,
        handshake_timeout_s: float,
        tls: ssl.SSLContext | None,
        grace_s: float = EVICTION_GRACE_S,
        unproven_grace_s: float = UNPROVEN_GRACE_S,
        silent_grace_s: float = SILENT_GRACE_S,
        max_unproven: int | None = None,
    ) -> None:
        self.protocol_class = protocol_class
        self.max_connections = max_connections
        """Places for connections whose TLS handshake has completed."""
        self.max_per_client = max_per_client
        self.handshake_timeout_s = handshake_timeout_s
        self.tls = tls
        self.places = Places(
            max_proven=max_connections,
            max_unproven=max_unproven
            if max_unproven is not None
            else UNPROVEN_PER_PLACE * max_connections,
            max_per_client=max_per_client,
            evict=self._evicted,
            grace_s=grace_s,
            unproven_grace_s=unproven_grace_s,
            silent_grace_s=silent_grace_s,
        )
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

    def __call__(
        self,
        *,
        config: Any,
        server_state: Any,
        app_state: Any,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Protocol:
        loop = _loop or asyncio.get_event_loop()
        if self.balancer is not None:  # one state for accepted and handed-over connections
            return _Accepted(self, self._make_balanced, loop)

        def make() -> Any:
            return self.protocol_class(
                config=config, server_state=server_state, app_state=app_state, _loop=_loop
            )

        return _Accepted(self, make, loop)

    @property
    def held(self) -> int:
        return len(self.places)

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
        self.balancer.publish(len(self.places))

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
        if self.balancer is None or self._shedding in self.places:
            return False
        fewest = self.balancer.fewest()
        if fewest is None or len(self.places) - fewest < 2:
            return False
        self._shedding = slot
        self.shed += 1
        self.observe("shed")
        return True

    def _make_balanced(self) -> Any:
        return self.protocol_class(
            config=self._config, server_state=self.state, app_state={}, _loop=None
        )

    def arrived(
        self, sock: socket.socket, make: Callable[[], Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        """A connection this process accepted: handed to a sibling worker holding
        fewer, or taken here."""
        if self.balancer is not None and self.balancer.hand_over(sock, len(self.places)):
            sock.close()
            self.observe("handed_over")
            return
        self.take(sock, make, loop)

    def take(
        self, sock: socket.socket, make: Callable[[], Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Admit a connection (accepted here or handed over), or close it."""
        try:
            peer = sock.getpeername()
        except OSError:  # already gone
            sock.close()
            return
        slot = self.admit(client_of(peer), loop.time())
        if self.balancer is not None:
            self.balancer.publish(len(self.places))
        if slot is None:
            sock.close()  # before any TLS work: no SSL object, no buffers
            return
        _open(slot, sock, make, loop)

    def admit(self, client: str | None, now: float) -> Slot | None:
        """A slot for a just-accepted connection of ``client``, or None: close it."""
        slot = Slot(self, client, now)
        if not self.places.admit(slot, now):
            return self._refuse(now)
        return slot

    def prove(self, slot: Slot, now: float) -> bool:
        """``slot``'s TLS handshake completed: False if it finds no place (close it)."""
        if slot not in self.places:
            return False  # taken for a newcomer meanwhile
        if self.places.prove(slot, now):
            return True
        self._refuse(now)  # no place for it
        self._released()
        return False

    def release(self, slot: Slot) -> None:
        if self.places.forget(slot):
            self._released()

    def _released(self) -> None:
        if self.balancer is not None:
            self.balancer.publish(len(self.places))
        self._closed_since_trim += 1
        if (
            self._closed_since_trim >= TRIM_AFTER_CLOSED
            and self._trim_timer is None
            and _trim_heap is not None
        ):
            loop = asyncio.get_running_loop()
            # A second after the wave (or when the last trim is old enough).
            self._trim_timer = loop.call_later(
                max(self._trim_at - loop.time(), 1.0), self._trim, loop
            )

    def _trim(self, loop: asyncio.AbstractEventLoop) -> None:
        self._trim_timer = None
        self._closed_since_trim = 0
        self._trim_at = loop.time() + TRIM_EVERY_S
        if _trim_heap is not None:
            _trim_heap()

    def _evicted(self, victim: Slot) -> None:
        """``victim``'s place was taken for a newcomer (:class:`Places`)."""
        self._released()  # now: its connection_lost comes later
        counted = getattr(victim.protocol, "connections", None)
        if counted is not None:  # nor does uvicorn count it meanwhile (its 503 limit)
            counted.discard(victim.protocol)
        victim.close()
        self.evicted += 1
        self.observe("evicted")
        self._report(asyncio.get_running_loop().time())

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
        log.warning(
            "connection limits: %d connections refused, %d slow ones evicted "
            "(%d held, at most %d with a completed handshake and %d without, "
            "%d per client)",
            refused,
            evicted,
            len(self.places),
            self.max_connections,
            self.places.max_unproven,
            self.max_per_client,
        )


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

    def __init__(
        self, gate: ConnectionGate, make: Callable[[], Any], loop: asyncio.AbstractEventLoop
    ) -> None:
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


def _open(
    slot: Slot, sock: socket.socket, make: Callable[[], Any], loop: asyncio.AbstractEventLoop
) -> None:
    """An admitted connection: once its first bytes arrive, its TLS handshake
    (within the gate's deadline for the whole opening), then ``make``'s HTTP
    protocol.  Until the socket is readable only a descriptor and a reader are
    held: a silent connection makes no TLS object (~55 KiB with uvloop's TLS
    buffers)."""
    gate = slot.gate
    if gate.tls is None:  # no handshake to wait for
        if gate.prove(slot, loop.time()):
            _serve(slot, sock, make, loop)
        else:
            sock.close()
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


def _serve(
    slot: Slot, sock: socket.socket, make: Callable[[], Any], loop: asyncio.AbstractEventLoop
) -> None:
    task = loop.create_task(_connect(slot, sock, make, loop))
    slot.handshake = task
    slot.close = task.cancel  # connect_accepted_socket closes the socket


async def _connect(
    slot: Slot, sock: socket.socket, make: Callable[[], Any], loop: asyncio.AbstractEventLoop
) -> None:
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
            protocol,
            sock,
            ssl=tls,
            ssl_handshake_timeout=max(left, 0.1) if tls is not None else None,
        )
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
    if slot not in gate.places:  # evicted as the handshake ended, or no place for it
        transport.abort()


class GatedProtocol:
    """Mixed into the HTTP protocols: gives the connection's slot back when it is
    lost, and notes when its client starts to owe the next request."""

    gate_slot: Slot | None = None
    opened_at: float | None = None
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        """The TLS handshake has completed: the connection moves to a proven
        place (:meth:`ConnectionGate.prove`) before its first request is read,
        or is closed."""
        slot = self.gate_slot
        proven = slot is None or slot.proven or slot.gate.prove(slot, self.loop.time())
        super().connection_made(transport)  # type: ignore[misc]
        if not proven:
            self.gate_slot = None
            getattr(self, "connections", set()).discard(self)
            transport.abort()

    def shed_if_unbalanced(self) -> None:
        """Close this connection after the response to the request just arrived
        if the gate wants it elsewhere (:meth:`ConnectionGate.should_shed`)."""
        slot, cycle = self.gate_slot, getattr(self, "cycle", None)
        if (
            slot is not None
            and cycle is not None
            and cycle.keep_alive
            and slot.gate.should_shed(slot)
        ):
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
