"""The owners' CAS client and the clean-room SDK bound a server's answers (red team rt10 F3's
siblings): a TLS server holding the certificate they trust answers without end, with a huge
declared length, or a byte at a time; each client ends in its own one-line transport error,
having held at most its cap, within its deadline."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sgxcloud.bounded_http import AnswerDeadline, AnswerTooLarge, BoundedTransport
from sgxcloud.cas.client import ClientError
from sgxcloud.cas.client.owner import OwnerClient
from sgxcloud.cas.service.server import make_loopback_tls
from sgxcloud.cleanroom.transport import TransportError
from sgxcloud.cleanroom.transport.tls import TlsIdentity

MIB = 1 << 20


def _endless(conn: ssl.SSLSocket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    for _ in range(1024):  # 64 MiB: four times the owners' client's cap
        conn.sendall(b"x" * 65536)


def _declared(conn: ssl.SSLSocket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n{")
    time.sleep(5)


def _trickle(conn: ssl.SSLSocket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(40):
        time.sleep(0.25)
        conn.sendall(b" ")


def _head_trickle(conn: ssl.SSLSocket) -> None:
    """The status line and headers one byte at a time, each well within a read's timeout
    (red team rt11 F4: the deadline did not cover the head)."""
    head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200 + b"\r\nContent-Length: 0\r\n\r\n"
    for byte in head:
        conn.sendall(bytes([byte]))
        time.sleep(0.1)


def _interim(conn: ssl.SSLSocket) -> None:
    """``102 Processing`` interim answers without end (for the test: 20 s)."""
    for _ in range(400):
        conn.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
        time.sleep(0.05)


@contextlib.contextmanager
def _rogue(cert: Path, key: Path, send: Callable[[ssl.SSLSocket], None]) -> Iterator[int]:
    """A loopback TLS server that reads each request's head and answers with ``send``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))

    def handle(raw: socket.socket) -> None:
        with contextlib.suppress(OSError), context.wrap_socket(raw, server_side=True) as conn:
            with conn.makefile("rb") as reader:
                while reader.readline() not in (b"\r\n", b""):
                    pass
            send(conn)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.fixture
def tls(tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_loopback_tls(tmp_path / "tls")


@pytest.mark.parametrize(
    ("send", "error"),
    [
        (_endless, AnswerTooLarge),
        (_declared, AnswerTooLarge),
        (_trickle, AnswerDeadline),
        (_head_trickle, AnswerDeadline),
        (_interim, AnswerDeadline),
    ],
)
def test_the_transport_bounds_size_and_time(tls, send, error) -> None:  # type: ignore[no-untyped-def]
    transport = BoundedTransport(
        verify=ssl.create_default_context(cafile=str(tls.ca_cert)),
        max_answer_bytes=MIB,
        deadline=1.5,
    )
    with _rogue(tls.cert, tls.key, send) as port, httpx.Client(transport=transport) as http:
        started = time.monotonic()
        with pytest.raises(error):
            http.get(f"https://127.0.0.1:{port}/")
        assert time.monotonic() - started < 3.5  # the deadline and at most one read's timeout


@pytest.mark.parametrize("send", [_head_trickle, _interim])
def test_the_deadline_bounds_the_answers_head(tls, send) -> None:  # type: ignore[no-untyped-def]
    """Reads of the head get the time left, not the client's (here longer) read timeout."""
    transport = BoundedTransport(
        verify=ssl.create_default_context(cafile=str(tls.ca_cert)),
        max_answer_bytes=MIB,
        deadline=1.5,
    )
    with (
        _rogue(tls.cert, tls.key, send) as port,
        httpx.Client(transport=transport, timeout=1.0) as http,
    ):
        started = time.monotonic()
        with pytest.raises(AnswerDeadline, match="deadline"):
            http.get(f"https://127.0.0.1:{port}/")
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 2.0, elapsed


def test_the_deadline_bounds_connecting(tls) -> None:  # type: ignore[no-untyped-def]
    """A server that accepts and never completes the TLS handshake: the deadline (1 s) ends
    the request, not the client's longer connect timeout."""
    server = socket.create_server(("127.0.0.1", 0))
    transport = BoundedTransport(
        verify=ssl.create_default_context(cafile=str(tls.ca_cert)),
        max_answer_bytes=MIB,
        deadline=1.0,
    )
    with server, httpx.Client(transport=transport, timeout=30.0) as http:
        started = time.monotonic()
        with pytest.raises(AnswerDeadline):
            http.get(f"https://127.0.0.1:{server.getsockname()[1]}/")
        assert time.monotonic() - started < 1.5


@pytest.mark.filterwarnings("ignore:no CAS signing key pinned")
@pytest.mark.parametrize("send", [_head_trickle, _interim])
def test_the_owner_client_ends_a_slow_head_at_its_deadline(tls, monkeypatch, send) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    from sgxcloud.cas.client import owner as owner_module

    # The owners' settings, shortened for the test: deadline 2 s, each read 1 s.
    monkeypatch.setattr(owner_module, "OWNER_DEADLINE", 2.0)
    monkeypatch.setattr(owner_module, "OWNER_TIMEOUT", 1.0)
    with _rogue(tls.cert, tls.key, send) as port:
        owner = OwnerClient(
            f"https://127.0.0.1:{port}",
            ec.generate_private_key(ec.SECP256R1()),
            ca_file=tls.ca_cert,
        )
        started = time.monotonic()
        with owner, pytest.raises(ClientError, match=r"cannot reach the CAS .*: AnswerDeadline$"):
            owner.deployment_id()
        assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("send", [_head_trickle, _interim])
def test_the_sdk_ends_a_slow_head_at_its_deadline(tmp_path: Path, send) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sgxcloud.cleanroom.sdk import CleanroomClient

    cert, key = TlsIdentity.generate("127.0.0.1").write_pem_files(tmp_path)
    with _rogue(cert, key, send) as port:
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"unreachable \(AnswerDeadline\)$"):
            CleanroomClient.connect(
                f"https://127.0.0.1:{port}",
                None,  # type: ignore[arg-type]  # never reached
                "party",
                Ed25519PrivateKey.generate(),
                timeout=1.0,  # deadline: 2 s
            )
        assert time.monotonic() - started < 2.5


@pytest.mark.filterwarnings("ignore:no CAS signing key pinned")
def test_the_owner_client_refuses_an_endless_answer_in_one_line(tls) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    with _rogue(tls.cert, tls.key, _endless) as port:
        owner = OwnerClient(
            f"https://127.0.0.1:{port}",
            ec.generate_private_key(ec.SECP256R1()),
            ca_file=tls.ca_cert,
        )
        with owner, pytest.raises(ClientError, match="AnswerTooLarge"):
            owner.deployment_id()


def test_the_sdk_refuses_an_endless_answer_in_one_line(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sgxcloud.cleanroom.sdk import CleanroomClient

    cert, key = TlsIdentity.generate("127.0.0.1").write_pem_files(tmp_path)
    with (
        _rogue(cert, key, _endless) as port,
        pytest.raises(TransportError, match="AnswerTooLarge"),
    ):
        CleanroomClient.connect(
            f"https://127.0.0.1:{port}",
            None,  # type: ignore[arg-type]  # never reached: the answer is refused first
            "party",
            Ed25519PrivateKey.generate(),
            max_answer_bytes=MIB,
        )
