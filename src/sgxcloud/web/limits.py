"""Bounds on what a caller can make a service hold before it is authenticated.

The CAS and the clean-room coordinator run in enclaves, where memory is EPC:
a service that reads a whole request body before checking who sent it lets
anyone on the network fill it (one unsigned 300 MiB body took the CAS from
96 to 697 MiB).  Both services therefore sit behind the same two pieces:

* :class:`RequestLimitsMiddleware` (ASGI), per route and before the
  application sees the request: a ``Content-Length`` above the route's limit
  is answered 413 without reading a byte of the body; the headers of a signed
  route are checked (signature headers present, known party, clock) before
  the body is read, so an unsigned request is answered 401 at once; a body
  sent without a length (chunked) is counted while it arrives and refused 413
  as soon as it passes the limit; a body that trickles in for longer than
  ``body_timeout_s`` is answered 408.  The 413/408 answers close the
  connection, so an attacker cannot keep streaming into it.
* :func:`uvicorn_options`: every accepted connection counted from accept on,
  before its TLS handshake, against ``max_connections`` and its client's
  ``max_connections_per_client``, slow ones evicted when the service is full,
  the handshake bounded by ``header_timeout_s`` (:mod:`sgxcloud.web.connections`);
  keep-alive; and an HTTP/1.1 protocol that closes a connection that has not
  sent a complete request head within ``header_timeout_s`` of opening
  (slow-loris), refuses a head growing past ``max_header_bytes`` and aborts
  a connection whose client does not read its responses within
  ``response_timeout_s`` (slow reader): :class:`LimitedHttpToolsProtocol`
  (C parser, the default) or :class:`LimitedH11Protocol` (pure Python), the
  same limits on both.

The signature still covers the body, so a request passing the header check
is only fully authenticated once the (bounded) body has been read.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sgxcloud.errors import InputError, SgxcloudError
from sgxcloud.web.connections import ConnectionGate, GatedProtocol

KIB = 1024
MIB = 1024 * KIB

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Precheck = Callable[[Scope, Headers], None]
"""Checks a request's headers before its body is read; raises a
:class:`~sgxcloud.errors.SgxcloudError` (answered 401) to refuse it."""

Render = Callable[[int, str], Mapping[str, Any]]
"""The service's error body for an HTTP status and a message."""


class BodyTooLarge(InputError):
    """A request body (or JSON document) is larger or deeper than allowed."""


@dataclass(frozen=True)
class RouteLimit:
    """The body limit (and header check) for requests matching ``method`` and ``path``.

    ``path`` is a regular expression matched against the whole request path.
    """

    method: str
    path: str
    max_body_bytes: int
    precheck: Precheck | None = None

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and self._pattern.fullmatch(path) is not None

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile(self.path)


@dataclass(frozen=True)
class RequestLimits:
    """Limits shared by every route; each route may set its own body limit."""

    max_body_bytes: int = 16 * KIB
    """Body limit of routes without their own (health, reads, deletes...)."""
    body_timeout_s: float = 30.0
    """How long a whole request body may take to arrive."""
    header_timeout_s: float = 10.0
    """How long a connection may take to send a complete request head."""
    max_header_bytes: int = 16 * KIB
    """Largest request line plus headers: a head still incomplete past it is answered 400."""
    max_connections: int = 256
    """Connections held at once, counted from accept (TLS handshakes included).
    One more takes the slot of a connection that has owed its request longest
    (longer than :data:`~sgxcloud.web.connections.EVICTION_GRACE_S`), or is
    closed at once."""
    max_connections_per_client: int = 64
    """Connections one client (IPv4 address, IPv6 /64) may hold at once, the same
    way; 0: no per-client limit (behind a proxy, every client is the proxy)."""
    keep_alive_s: int = 5
    """How long an idle keep-alive connection stays open."""
    response_timeout_s: float = 30.0
    """How long a response may wait for the client to read it: a connection whose
    writing stays paused this long (the client takes nothing in) is aborted."""

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_header_bytes",
            "max_connections",
            "keep_alive_s",
            "max_connections_per_client",
        ):
            least = 0 if name in ("max_body_bytes", "max_connections_per_client") else 1
            if int(getattr(self, name)) < least:
                raise ValueError(f"{name} must be {'positive' if least else 'zero or more'}")
        for name in ("body_timeout_s", "header_timeout_s", "response_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive")


class RequestLimitsMiddleware:
    """ASGI middleware enforcing :class:`RequestLimits` and per-route limits.

    The body is read here, within its limit, and handed to the application in
    one message, so nothing downstream can read more than the limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: RequestLimits,
        routes: tuple[RouteLimit, ...] | list[RouteLimit],
        render: Render,
    ) -> None:
        self.app = app
        self.limits = limits
        self.routes = tuple(routes)
        self.render = render

    def route_for(self, method: str, path: str) -> RouteLimit | None:
        return next((r for r in self.routes if r.matches(method, path)), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admitted = await self.admit(
            scope, receive, send, self.route_for(scope["method"], scope["path"])
        )
        if admitted is not None:
            await self.app(scope, admitted, send)

    async def admit(
        self, scope: Scope, receive: Receive, send: Send, route: RouteLimit | None
    ) -> Receive | None:
        """Apply the limits of ``route`` (None: the shared ones) to an HTTP request.

        Returns what the application must receive the request through: the
        body read here within its limit (or ``receive`` itself when there is
        no body).  None when the request was refused (answered here) or the
        client went away.  :class:`~sgxcloud.web.routing.DirectApp` calls this
        directly for the routes it serves ahead of the middleware stack.
        """
        limit = route.max_body_bytes if route else self.limits.max_body_bytes
        declared, chunked = _framing(scope["headers"])
        if declared == -1:
            await self._refuse(scope, receive, send, 400, "malformed Content-Length")
            return None
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, 413, _too_large(limit))
            return None
        if route is not None and route.precheck is not None:
            try:
                route.precheck(scope, Headers(scope=scope))
            except SgxcloudError as exc:
                await self._refuse(scope, receive, send, 401, str(exc))
                return None
        if not chunked and not declared:
            # No body by HTTP/1.1's framing (no length, or 0, and not chunked):
            # nothing to bound or wait for, the application reads b"" at once.
            return receive
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                body = await _read_body(receive, limit)
        except TimeoutError:
            await self._refuse(
                scope,
                receive,
                send,
                408,
                f"request body not received within {self.limits.body_timeout_s:g} s",
            )
            return None
        except BodyTooLarge as exc:
            await self._refuse(scope, receive, send, 413, str(exc))
            return None
        if body is None:  # the client went away
            return None
        return _replay(body, receive)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, message: str
    ) -> None:
        # Connection: close — the rest of an oversized body is never read.
        response = JSONResponse(
            dict(self.render(status, message)), status_code=status, headers={"connection": "close"}
        )
        await response(scope, receive, send)


def _framing(raw_headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(Content-Length: None if absent, -1 if malformed or contradictory;
    whether a Transfer-Encoding is present), read from the ASGI headers."""
    lengths: set[bytes] = set()
    encoded = False
    for name, value in raw_headers:
        name = name.lower()  # ASGI servers lower-case names; be sure
        if name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            encoded = True
    if not lengths:
        return None, encoded
    (value, *others) = lengths
    if others or not value.isdigit():
        return -1, encoded
    return int(value), encoded


def _too_large(limit: int) -> str:
    return f"request body larger than this endpoint accepts ({limit} bytes)"


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, counted as it arrives (chunked too); None if the client left."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(_too_large(limit))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # only http.disconnect can follow

    return replay


class _SlowHeadCutoff:
    """Closes a connection that is slow to send a request head (slow-loris).

    uvicorn times out idle keep-alive connections but waits forever for a
    request head that arrives a byte at a time.  Here a connection must
    deliver a complete head within ``header_timeout_s`` of opening (its
    accept, TLS handshake included: ``opened_at``, set by the connection
    gate) and of each finished response; :func:`uvicorn_options` sets the value.  Mixed
    into each of uvicorn's HTTP/1.1 protocols below (both keep ``loop``,
    ``transport`` and the current request's ``cycle`` under those names).
    """

    header_timeout_s: float = RequestLimits.header_timeout_s
    opened_at: float | None = None
    _head_deadline: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_deadline(self.opened_at)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_deadline(self, since: float | None = None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        delay = self.header_timeout_s
        if since is not None:
            delay = max(delay - (self.loop.time() - since), 0.0)
        self._head_deadline = self.loop.call_later(delay, self._head_late)

    def _head_late(self) -> None:
        self._head_deadline = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()


CLOSING_GRACE_S = 5.0
"""How long a connection the server closed may wait, its output all handed to
the socket, for the client's side of the TLS close."""


class _SlowReadCutoff:
    """Aborts a connection whose client does not read what it is sent (slow reader).

    uvicorn awaits a paused transport before each response write and has no
    deadline on that wait: a client that pipelines requests and never reads
    kept its connection (and its ``max_connections`` slot) forever, and the
    head cutoff and keep-alive timer never ran because a response was always
    unfinished.  Here the transport pausing writing (its buffer past the high
    water mark) arms a deadline of ``response_timeout_s``; it is cancelled
    only when the client has read the buffer down to the low water mark.  So
    every state of a connection has a deadline: the head's, the body's, the
    keep-alive's, or this one while unread output waits.  The connection is
    aborted, not closed: a close would wait for the buffer to flush.
    """

    response_timeout_s: float = RequestLimits.response_timeout_s
    _write_deadline: asyncio.TimerHandle | None = None
    _closing_check: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(
                self.response_timeout_s, self._unread_too_long
            )

    def resume_writing(self) -> None:
        self._cancel_write_deadline()
        super().resume_writing()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_write_deadline()
        if self._closing_check is not None:
            self._closing_check.cancel()
            self._closing_check = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _cancel_write_deadline(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _unread_too_long(self) -> None:
        self._write_deadline = None
        # connection_lost follows: the response waiting to write is told the
        # client is gone, pipelined requests behind it are dropped.
        self.transport.abort()

    # A connection the server closes (503 or 4xx with ``Connection: close``,
    # head or keep-alive deadline, malformed request) is only gone once TLS has
    # flushed and exchanged close_notify; a client that reads nothing never
    # answers, and the event loop waits 30 s (its TLS shutdown timeout) with the
    # slot taken.  Once what was written has left the transport, the client has
    # CLOSING_GRACE_S more before the connection is aborted.

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._watch_closing()

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()  # type: ignore[misc]
        self._watch_closing()

    def send_400_response(self, msg: str) -> None:
        super().send_400_response(msg)  # type: ignore[misc]
        self._watch_closing()

    def _head_late(self) -> None:
        super()._head_late()  # type: ignore[misc]
        self._watch_closing()

    def _watch_closing(self) -> None:
        if self.transport.is_closing() and self._closing_check is None:
            self._closing_check = self.loop.call_later(CLOSING_GRACE_S, self._closing_too_long)

    def _closing_too_long(self) -> None:
        self._closing_check = None
        if self.transport.get_write_buffer_size():
            # Still flushing to a client that reads: the write deadline covers a stall.
            self._closing_check = self.loop.call_later(CLOSING_GRACE_S, self._closing_too_long)
        else:
            self.transport.abort()


class LimitedH11Protocol(GatedProtocol, _SlowReadCutoff, _SlowHeadCutoff, H11Protocol):
    """uvicorn's pure-Python HTTP/1.1 protocol (h11) with the slow-head and slow-read cutoffs.

    h11 itself refuses (400) a request head still incomplete after
    ``h11_max_incomplete_event_size`` bytes, which :func:`uvicorn_options` sets.
    """


class LimitedHttpToolsProtocol(GatedProtocol, _SlowReadCutoff, _SlowHeadCutoff, HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol on httptools (llhttp, C) with the same limits as h11.

    The C parser costs a fraction of h11's CPU per request.  It has no bound
    of its own on a request head (httptools gathers a header that arrives in
    pieces in memory), so the head-size rule of :class:`LimitedH11Protocol` is
    kept here: a head still incomplete after more than ``max_head_bytes``
    bytes have arrived is answered 400 and the connection closed.
    """

    max_head_bytes: int = RequestLimits.max_header_bytes
    _in_head: bool = True
    _head_bytes: int = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._in_head
            and self._head_bytes > self.max_head_bytes
            and not self.transport.is_closing()
        ):
            self.send_400_response("Invalid HTTP request received.")

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
        # The new request's cycle (started or queued behind a pipelined one).
        if self.cycle is not None and self.cycle.transport is self.transport:
            self.cycle.transport = _HeadWithFirstBody(self.transport)
        self.shed_if_unbalanced()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next head starts here.  Bytes of it that came in the same read as
        # the end of this request (pipelining) are not counted: at most one read.
        self._in_head = True
        self._head_bytes = 0


class _HeadWithFirstBody:
    """One response's transport: the head goes out with the first body bytes.

    uvicorn writes a response's head and its body separately; over TLS that
    is two records, two encryptions and two socket writes (and two reads for
    the client) where one does: on the CAS's small answers the second write
    cost as much CPU as the first.  The head is held until the body's first
    write (an empty one for HEAD, 204 or an empty body) or until the
    connection is closed; an interim ``100 Continue`` is written at once.
    """

    __slots__ = ("_head", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if not self._started:
            if data.startswith(b"HTTP/1.1 100 "):  # the client waits for it to send the body
                self._transport.write(data)
                return
            self._started = True
            self._head = data
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


LimitedProtocol = LimitedH11Protocol | LimitedHttpToolsProtocol


def uvicorn_options(
    limits: RequestLimits,
    protocol: type[LimitedProtocol] = LimitedHttpToolsProtocol,
    *,
    tls: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``/``uvicorn.run`` enforcing ``limits``.

    Always one of the protocols above (httptools unless told), so that the
    slow-head cutoff and the head-size limit configured here apply, behind a
    :class:`~sgxcloud.web.connections.ConnectionGate` that counts every
    connection from accept on.  TLS (``tls``, e.g.
    :func:`~sgxcloud.web.connections.tls_context`) is done by the gate, once
    it has admitted a connection: give it here, never as uvicorn's ``ssl_*``
    options (the gate refuses connections that arrive already handshaken).
    """
    limited = type(
        protocol.__name__,
        (protocol,),
        {
            "header_timeout_s": limits.header_timeout_s,
            "max_head_bytes": limits.max_header_bytes,
            "response_timeout_s": limits.response_timeout_s,
        },
    )
    gate = ConnectionGate(
        limited,
        max_connections=limits.max_connections,
        max_per_client=limits.max_connections_per_client,
        handshake_timeout_s=limits.header_timeout_s,
        tls=tls,
    )
    return {
        "http": gate,
        # The gate bounds connections; uvicorn's own count (503 at the limit)
        # is kept one above it, for requests still running on connections
        # already gone.
        "limit_concurrency": limits.max_connections + 1,
        "timeout_keep_alive": limits.keep_alive_s,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        # No WebSocket route is served; an upgraded connection would leave
        # these protocols (and the connection count) for one without their limits.
        "ws": "none",
    }


_SEPARATORS = (b",", b":", b"[", b"{")


def json_values_within(body: bytes, limit: int) -> bool:
    """Whether the JSON document ``body`` has at most ``limit`` of ``,`` ``:``
    ``[`` ``{`` outside its strings, told before parsing it, in C-speed passes
    over the bytes.

    Every value and key but the top value follows one of these (and every
    empty array or object holds one), so the count bounds the objects a
    parser builds, whatever the body's size.  That is what parsing costs:
    pydantic builds the whole input again for every error it reports, so
    700,000 empty lists in an unknown field (2 MiB) cost the CAS 2.3 s of CPU
    before its 400.  Counting the bytes everywhere overcounts by what strings
    hold, so only a body over ``limit`` that way is counted again with its
    strings set aside (escaped backslashes and quotes dropped, then every
    other piece between quotes); a string is a value or a key, so a body with
    more quotes than ``limit`` allows is over it without splitting.  Invalid
    JSON may pass: the parser refuses it without building anything.
    """
    if _separators_within(body, limit):
        return True
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    if body.count(b'"') > 2 * (limit + 1):
        return False
    return _separators_within(b"".join(body.split(b'"')[::2]), limit)


def _separators_within(data: bytes, limit: int) -> bool:
    total = 0
    for separator in _SEPARATORS:  # one pass each, stopping at the first over
        total += data.count(separator)
        if total > limit:
            return False
    return True


def load_json(body: bytes, *, max_depth: int = 32, max_values: int = 1 << 16) -> Any:
    """Parse a JSON request body no deeper than ``max_depth`` (arrays and
    objects) and of at most ``max_values`` values and keys (counted by
    :func:`json_values_within` before parsing: parsing and the walk below
    cost ~1 us a value).

    Deep nesting would otherwise end in a RecursionError (a 500) in the
    parser or in code that walks the document.
    """
    if not json_values_within(body, max_values):
        raise BodyTooLarge(f"JSON document of more than {max_values} values")
    try:
        document = json.loads(body)
    except RecursionError:
        raise BodyTooLarge(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise InputError("body is not a JSON document") from exc
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise BodyTooLarge(f"JSON nested deeper than {max_depth} levels")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return document
