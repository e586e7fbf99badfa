"""The red team's handshake-then-silence attack (attack-rt8, finding 3), for the
connection tests.

From each of many loopback source addresses, one TCP connection that completes
a real TLS handshake (with a throwaway self-signed client certificate, which a
clean-room node asks for), optionally sends ``then`` (a HELLO), and then reads
whatever comes and sends nothing, until the server closes it or ``renew_s``
has passed; then the next one, at most one connection per address per
``renew_s`` (staggered over the addresses).  Before, a completed handshake
kept its place for the 2 s grace: 40 addresses renewing every 1.5 s kept the
coordinator out of a node.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path


def _client_context() -> ssl.SSLContext:
    directory = Path(tempfile.mkdtemp(prefix="stranger-"))
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(directory / "key.pem"),
            "-out",
            str(directory / "cert.pem"),
            "-subj",
            "/CN=stranger",
            "-days",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


class HandshakeHolders:
    """Run the attack in threads while in the ``with`` block."""

    def __init__(
        self,
        address: tuple[str, int],
        sources: list[str],
        *,
        renew_s: float = 1.5,
        then: Callable[[], bytes] | None = None,
    ) -> None:
        self.address = address
        self.sources = sources
        self.renew_s = renew_s
        self.then = then
        self.handshakes = 0
        """Handshakes completed."""
        self._context = _client_context()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._hold, args=(source, n * renew_s / len(sources)), daemon=True
            )
            for n, source in enumerate(sources)
        ]

    def __enter__(self) -> HandshakeHolders:
        for thread in self._threads:
            thread.start()
        time.sleep(self.renew_s + 0.3)  # every address has had its turn
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _hold(self, source: str, delay: float) -> None:
        self._stop.wait(delay)
        while not self._stop.is_set():
            began = time.monotonic()
            with contextlib.suppress(OSError):
                self._one(source, began + self.renew_s)
            self._stop.wait(max(0.0, self.renew_s - (time.monotonic() - began)))

    def _one(self, source: str, until: float) -> None:
        raw = socket.create_connection(self.address, timeout=5, source_address=(source, 0))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._context.wrap_socket(raw) as sock:  # the whole handshake
            with self._lock:
                self.handshakes += 1
            if self.then is not None:
                sock.sendall(self.then())
            while (left := until - time.monotonic()) > 0 and not self._stop.is_set():
                sock.settimeout(min(left, 0.2))
                try:
                    if not sock.recv(4096):
                        return  # closed by the server
                except TimeoutError:
                    continue
