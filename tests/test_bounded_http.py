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
    [(_endless, AnswerTooLarge), (_declared, AnswerTooLarge), (_trickle, AnswerDeadline)],
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
