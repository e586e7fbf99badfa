"""Fresh TLS identities and mutually authenticated TLS 1.3 connections.

Every process makes its own key pair and a self-signed certificate when it
starts; nothing is issued by a CA.  Trust comes from attestation evidence that
binds the certificate's public key (see :mod:`.binding`), so the TLS layer
must accept any certificate while *requiring* one from both sides.  The
standard library's ``ssl`` cannot request a client certificate without a CA to
check it against, hence pyOpenSSL (the maintained OpenSSL binding) with a
verify callback that defers the decision to attestation.
"""

from __future__ import annotations

import datetime as dt
import select
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from sgxcloud.cleanroom.transport.errors import PeerClosed, PeerTimedOut, TransportError

IO_TIMEOUT_S = 60.0
"""How long one read or write may stall before the connection is abandoned."""


@dataclass(frozen=True)
class TlsIdentity:
    """A process's ephemeral TLS key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    cert: x509.Certificate

    @classmethod
    def generate(cls, common_name: str) -> TlsIdentity:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.DNSName(common_name)]),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    def public_key_der(self) -> bytes:
        return public_key_der(self.cert)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write_pem_files(self, directory: Path) -> tuple[Path, Path]:
        """Write cert and key for servers that only take file names (uvicorn)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path = directory / "tls-cert.pem"
        key_path = directory / "tls-key.pem"
        cert_path.touch(mode=0o600)  # public, but the workdir's files are all private
        cert_path.write_bytes(self.cert_pem())
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


def public_key_der(cert: x509.Certificate) -> bytes:
    """SubjectPublicKeyInfo DER: what attestation evidence binds, not the whole cert."""
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _accept_any(_conn: SSL.Connection, _cert, _errno: int, _depth: int, _ok: int) -> bool:
    # The certificate is judged by attestation after the handshake, never by a CA.
    return True


def _context(identity: TlsIdentity) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_certificate(identity.cert)
    ctx.use_privatekey(identity.key)
    ctx.check_privatekey()
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any)
    return ctx


def server_context(identity: TlsIdentity) -> SSL.Context:
    """The context of a listener's connections, made once: a listener that
    drives its handshakes itself (``transport.server``) wraps each accepted
    socket in ``SSL.Connection(context, sock)`` and, once the handshake is
    done, in a :class:`TlsConnection`."""
    return _context(identity)


class TlsConnection:
    """A blocking-with-timeout view of a pyOpenSSL connection.

    The socket is non-blocking underneath (that is how timeouts work), so every
    call loops on OpenSSL's want-read/want-write until done or timed out.
    """

    def __init__(
        self,
        conn: SSL.Connection,
        sock: socket.socket,
        timeout: float,
        deadline: float | None = None,
        received: bytes = b"",
    ) -> None:
        self._conn = conn
        self._sock = sock
        self.timeout = timeout
        self.deadline = deadline
        """``time.monotonic()`` by which everything must be done (a session
        opening), on top of the per-operation ``timeout``; None: no deadline."""
        self._closed = False
        self._received = bytearray(received)
        """Bytes already read from the connection (a listener reads a peer's
        first frame itself, ``transport.server``), returned before any more."""

    def _wait(self, readable: bool) -> None:
        rl, wl = ([self._sock], []) if readable else ([], [self._sock])
        wait = self.timeout
        if self.deadline is not None:
            wait = min(wait, max(self.deadline - time.monotonic(), 0.0))
        r, w, _ = select.select(rl, wl, [], wait)
        if not r and not w:
            raise PeerTimedOut("peer did not respond in time")

    def _retrying(self, op):
        while True:
            try:
                return op()
            except SSL.WantReadError:
                self._wait(readable=True)
            except SSL.WantWriteError:
                self._wait(readable=False)
            except SSL.ZeroReturnError as exc:
                raise PeerClosed("peer closed the connection") from exc
            except SSL.SysCallError as exc:
                raise TransportError("connection lost") from exc
            except SSL.Error as exc:
                raise TransportError("TLS failure (record rejected or handshake failed)") from exc

    def handshake(self) -> None:
        self._retrying(self._conn.do_handshake)

    def peer_certificate(self) -> x509.Certificate:
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        if cert is None:  # cannot happen with VERIFY_FAIL_IF_NO_PEER_CERT; be explicit
            raise TransportError("peer presented no certificate")
        return cert

    def own_certificate(self) -> x509.Certificate:
        return self._conn.get_certificate(as_cryptography=True)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self._retrying(lambda v=view: self._conn.send(v[: 1 << 20]))
            view = view[sent:]

    def recv_exact(self, n: int) -> bytes:
        chunks = self._received[:n]
        del self._received[:n]
        while len(chunks) < n:
            want = min(n - len(chunks), 1 << 20)
            chunk = self._retrying(lambda want=want: self._conn.recv(want))
            if not chunk:
                raise PeerClosed("peer closed the connection")
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        """Idempotent: OpenSSL keeps the descriptor's number, so a second
        shutdown would write to (or read from) whatever file or socket has
        been given that number since — a staged stream was corrupted so."""
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
        finally:
            self._sock.close()


def _wrap(
    sock: socket.socket,
    identity: TlsIdentity,
    server: bool,
    timeout: float,
    deadline: float | None = None,
):
    sock.settimeout(timeout)
    conn = SSL.Connection(_context(identity), sock)
    if server:
        conn.set_accept_state()
    else:
        conn.set_connect_state()
    tls = TlsConnection(conn, sock, timeout, deadline)
    try:
        tls.handshake()
    except TransportError:
        sock.close()
        raise
    return tls


def connect(
    address: tuple[str, int],
    identity: TlsIdentity,
    timeout: float = IO_TIMEOUT_S,
    source: str | None = None,
):
    """Open a mutually authenticated TLS 1.3 connection (certificates unjudged yet),
    from the local address ``source`` if given."""
    try:
        sock = socket.create_connection(
            address, timeout=timeout, source_address=(source, 0) if source else None
        )
    except TimeoutError as exc:  # a timeout, not a refusal: callers do not retry it
        raise PeerTimedOut(f"cannot reach {address[0]}:{address[1]} (timed out)") from exc
    except OSError as exc:
        raise TransportError(f"cannot reach {address[0]}:{address[1]} ({exc.strerror})") from exc
    return _wrap(sock, identity, server=False, timeout=timeout)


def accept(
    sock: socket.socket,
    identity: TlsIdentity,
    timeout: float = IO_TIMEOUT_S,
    deadline: float | None = None,
):
    """Complete the server side of the handshake on an accepted socket
    (by ``deadline``, a ``time.monotonic()`` value, if given)."""
    return _wrap(sock, identity, server=True, timeout=timeout, deadline=deadline)


def pinned_client_context(cert_pem: bytes) -> ssl.SSLContext:
    """An ``ssl`` context that trusts exactly one (attested) self-signed certificate.

    Used for the coordinator's HTTPS API once its evidence has been checked:
    any other certificate, even one a public CA signed, fails the handshake.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the pin is the certificate itself, not a name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert_pem.decode())
    return ctx


def fetch_server_certificate(host: str, port: int, timeout: float = 10.0) -> x509.Certificate:
    """The certificate a TLS server presents, unverified (verification is by attestation)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise TransportError(f"cannot reach {host}:{port} ({exc})") from exc
    if not der:
        raise TransportError(f"{host}:{port} presented no certificate")
    return x509.load_der_x509_certificate(der)
