"""The HTTP/1.1 protocols of :mod:`sgxcloud.web.limits` keep the same limits.

The services run on httptools' C parser (:class:`LimitedHttpToolsProtocol`)
for its lower CPU per request; h11 (:class:`LimitedH11Protocol`) remains
available.  Both must close a connection that is slow to send a request head
(uvicorn alone waits forever) and refuse a head that grows past the limit
without ending (h11 does that itself, httptools would gather it in memory).
Real uvicorn servers over TLS on loopback, spoken to with raw sockets.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from sgxcloud.cas.service.server import PeerCertificateProtocol, make_loopback_tls
from sgxcloud.web.connections import EVICTION_GRACE_S, tls_context
from sgxcloud.web.limits import (
    LimitedH11Protocol,
    LimitedHttpToolsProtocol,
    RequestLimits,
    uvicorn_options,
)

LIMITS = RequestLimits(header_timeout_s=0.5, max_header_bytes=4096)


BIG = 64 * 1024
"""The body of GET /big: pipelined, a few fill any socket buffer a reader leaves unread."""


async def _echo(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Answers the body's length, so a test sees the whole request arrived
    (GET /big: ``BIG`` bytes)."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"b" * BIG if scope["path"] == "/big" else str(size).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_loopback_tls(tmp_path_factory.mktemp("tls"))


PROTOCOLS = pytest.mark.parametrize(
    "protocol", [LimitedHttpToolsProtocol, LimitedH11Protocol], ids=["httptools", "h11"]
)


@contextmanager
def _serving(tls, protocol: type, limits: RequestLimits) -> Iterator[uvicorn.Server]:  # type: ignore[no-untyped-def]
    options = uvicorn_options(limits, protocol, tls=tls_context(str(tls.cert), str(tls.key)))
    config = uvicorn.Config(
        _echo, host="127.0.0.1", port=0, log_level="warning", lifespan="off", **options
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not running.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.started, "the server did not start"
    try:
        yield running
    finally:
        running.should_exit = True
        thread.join(timeout=10)


def _port(running: uvicorn.Server) -> int:
    return running.servers[0].sockets[0].getsockname()[1]


@pytest.fixture(params=[LimitedHttpToolsProtocol, LimitedH11Protocol], ids=["httptools", "h11"])
def server(request: pytest.FixtureRequest, tls) -> Iterator[tuple[int, ssl.SSLContext]]:  # type: ignore[no-untyped-def]
    with _serving(tls, request.param, LIMITS) as running:
        yield _port(running), ssl.create_default_context(cafile=str(Path(tls.ca_cert)))


def _connect(server: tuple[int, ssl.SSLContext]) -> ssl.SSLSocket:
    port, context = server
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _response(sock: ssl.SSLSocket) -> bytes:
    """One response's bytes (the echo's bodies are short), b'' if the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _closed_within(sock: ssl.SSLSocket, seconds: float, trickle: bytes) -> float | None:
    """Send ``trickle`` a byte every 0.05 s until the server closes; seconds it took."""
    started = time.monotonic()
    sock.settimeout(0.05)
    for n in range(int(seconds / 0.05)):
        try:
            sock.sendall(trickle[n % len(trickle) :][:1])
            if sock.recv(1) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            return time.monotonic() - started
    return None


def test_a_request_and_its_body_are_served(server) -> None:  # type: ignore[no-untyped-def]
    with _connect(server) as sock:
        for _ in range(2):  # keep-alive: the second request on the same connection
            sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            answer = _response(sock)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n5")


def test_a_head_trickling_in_is_cut_off(server) -> None:  # type: ignore[no-untyped-def]
    with _connect(server) as sock:
        took = _closed_within(sock, 4, b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200)
    assert took is not None, "a connection sending a head byte per 0.05 s stayed open 4 s"
    assert took < LIMITS.header_timeout_s + 1


def test_the_head_deadline_restarts_after_each_response(server) -> None:  # type: ignore[no-untyped-def]
    with _connect(server) as sock:
        time.sleep(LIMITS.header_timeout_s * 0.6)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(LIMITS.header_timeout_s * 0.6)  # past the first deadline, not the second
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200")
        took = _closed_within(sock, 4, b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200)
    assert took is not None and took < LIMITS.header_timeout_s + 1


def test_a_head_growing_past_the_limit_is_refused(server) -> None:  # type: ignore[no-untyped-def]
    with _connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent, answer = 0, b""
        sock.settimeout(0.002)
        while sent < 1 << 20 and not answer:  # a MiB: far past the limit
            sock.sendall(b"a" * 1024)
            sent += 1024
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                pass
            except ssl.SSLWantReadError:  # a TLS 1.3 session ticket, no data
                pass
        sock.settimeout(5)
        answer += _response(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert sent < 256 * 1024, f"the server let {sent} bytes of an unfinished head in"


def test_a_head_within_the_limit_is_served(server) -> None:  # type: ignore[no-untyped-def]
    with _connect(server) as sock:
        for piece in (b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-Big: " + b"a" * 3000, b"\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        assert _response(sock).startswith(b"HTTP/1.1 200")


def _slow_reader(port: int, context: ssl.SSLContext, requests: int = 200) -> ssl.SSLSocket:
    """A client that pipelines ``requests`` x GET /big through a 4 KiB receive
    buffer and never reads an answer (red team, slow_reader.py)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * requests)
    return sock


def _wait(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize(
    "protocol",
    [LimitedHttpToolsProtocol, LimitedH11Protocol, PeerCertificateProtocol],
    ids=["httptools", "h11", "cas-mtls"],
)
def test_a_client_that_does_not_read_loses_its_connections(tls, protocol) -> None:  # type: ignore[no-untyped-def]
    """Slow readers fill every slot, are cut off once their output stays unread
    for ``response_timeout_s``, and a legitimate request is served after them.

    The old protocols waited for such a client forever: its connection stayed
    among the server's connections (the slots ``max_connections`` counts) and
    every other request was answered 503.  Generous bounds: 1 s is the limit,
    20 s the test's patience (the event loop's own TLS close gives up after 30).
    """
    limits = RequestLimits(header_timeout_s=0.5, max_connections=3, response_timeout_s=1)
    context = ssl.create_default_context(cafile=str(Path(tls.ca_cert)))
    with _serving(tls, protocol, limits) as running:
        port = _port(running)
        connections = running.server_state.connections
        readers = [_slow_reader(port, context) for _ in range(limits.max_connections)]
        try:
            assert _wait(lambda: len(connections) == 0, 20), (
                f"{len(connections)} connections whose client reads nothing held 20 s "
                f"(response_timeout_s {limits.response_timeout_s:g})"
            )
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
                assert _response(sock).startswith(b"HTTP/1.1 200")
        finally:
            for reader in readers:
                reader.close()


@PROTOCOLS
def test_a_connection_the_server_closes_is_released_though_the_client_is_silent(
    tls, protocol
) -> None:  # type: ignore[no-untyped-def]
    """The head deadline closes an idle connection whose client then neither reads
    nor closes: it leaves the server's connections ``CLOSING_GRACE_S`` later.

    Before, the close waited for the client's TLS close_notify until the event
    loop's TLS shutdown timeout (30 s), the slot taken all along.
    """
    limits = RequestLimits(header_timeout_s=0.5)
    context = ssl.create_default_context(cafile=str(Path(tls.ca_cert)))
    with _serving(tls, protocol, limits) as running:
        connections = running.server_state.connections
        raw = socket.create_connection(("127.0.0.1", _port(running)), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1"):
            assert _wait(lambda: len(connections) == 1, 10)
            assert _wait(lambda: len(connections) == 0, 20), (
                "a connection closed by the server held 20 s by a silent client"
            )


@PROTOCOLS
def test_a_slow_but_reading_client_gets_its_whole_answer(tls, protocol) -> None:  # type: ignore[no-untyped-def]
    """The deadline is on output left unread, not on the response: a client that
    reads keeps its connection however long the answers take in total."""
    limits = RequestLimits(header_timeout_s=5, response_timeout_s=1)
    context = ssl.create_default_context(cafile=str(Path(tls.ca_cert)))
    with _serving(tls, protocol, limits) as running:
        sock = _slow_reader(_port(running), context, requests=40)
        with sock:
            expected = 40 * BIG
            got, body, started = 0, b"", time.monotonic()
            while got < expected:
                chunk = sock.recv(16384)
                assert chunk, f"closed after {got} of {expected} bytes"
                body += chunk
                got = body.count(b"b")
                time.sleep(0.002)  # slower than the server writes: it pauses often
            assert time.monotonic() - started > 0  # it did read through pauses
            assert body.count(b"HTTP/1.1 200") == 40


def test_expect_100_continue_is_answered_before_the_body(server) -> None:  # type: ignore[no-untyped-def]
    """The interim answer is not held back with the response head."""
    with _connect(server) as sock:
        sock.sendall(
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        sock.settimeout(5)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(b"hello")
        answer = interim.partition(b"\r\n\r\n")[2] or _response(sock)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n5"), answer


class _Recorded:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_a_response_head_is_written_with_its_first_body_bytes() -> None:
    from sgxcloud.web.limits import _HeadWithFirstBody

    sent = _Recorded()
    response = _HeadWithFirstBody(sent)  # type: ignore[arg-type]
    response.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # at once: the client waits for it
    response.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    assert sent.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    response.write(b"body")
    response.write(b"more")
    assert sent.writes[1:] == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody", b"more"]
    assert response.get_extra_info("peername") == "info:peername" and not response.is_closing()
    # A head whose body never comes (the app failed after starting) goes out on close.
    sent = _Recorded()
    response = _HeadWithFirstBody(sent)  # type: ignore[arg-type]
    response.write(b"HTTP/1.1 200 OK\r\n\r\n")
    response.close()
    assert sent.writes == [b"HTTP/1.1 200 OK\r\n\r\n"] and response.is_closing()
    # HEAD, 204, empty bodies: uvicorn writes b"" as the body, which sends the head.
    sent = _Recorded()
    response = _HeadWithFirstBody(sent)  # type: ignore[arg-type]
    response.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    response.write(b"")
    assert sent.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]


@pytest.mark.parametrize(
    "protocol",
    [LimitedHttpToolsProtocol, LimitedH11Protocol, PeerCertificateProtocol],
    ids=["httptools", "h11", "cas-mtls"],
)
def test_a_full_server_gives_the_slot_of_the_slowest_connection_to_a_new_one(tls, protocol) -> None:  # type: ignore[no-untyped-def]
    """Connections are counted before their handshake.  At the limit a newcomer
    takes at once the slot of a connection whose first request has not arrived
    whole (here the slow head: it has proven only its handshake, red team
    attack-rt8 finding 3), never that of a keep-alive connection just
    answered; a service full of answered connections closes a newcomer at once
    until one has been idle for the grace, and then the one idle longest gives
    way."""
    limits = RequestLimits(header_timeout_s=30, max_connections=2)
    context = ssl.create_default_context(cafile=str(Path(tls.ca_cert)))
    with _serving(tls, protocol, limits) as running:
        server = (_port(running), context)
        slow = _connect(server)
        slow.sendall(b"GET / HTTP/1.1\r\n")
        answered = _connect(server)
        answered.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert _response(answered).startswith(b"HTTP/1.1 200")
        with _connect(server) as newcomer:
            newcomer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _response(newcomer).startswith(b"HTTP/1.1 200")
            assert _closed_within(slow, 2, b"X") is not None, "the slow head kept its slot"
            time.sleep(0.1)  # idle times apart by more than the loop clock's 1 ms (uvloop)
            answered.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _response(answered).startswith(b"HTTP/1.1 200"), "the wrong connection went"
            # Full of answered connections, none idle for the grace: closed at once.
            with pytest.raises((OSError, ssl.SSLError)), _connect(server) as refused:
                refused.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                if refused.recv(1) == b"":
                    raise ConnectionResetError("closed by the server")
            time.sleep(EVICTION_GRACE_S + 0.2)
            with _connect(server) as late:
                late.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _response(late).startswith(b"HTTP/1.1 200")
            assert _closed_within(newcomer, 2, b"X") is not None, "not the one idle longest"
        slow.close()
        answered.close()
