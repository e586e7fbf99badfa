"""The red team's one-byte openers (attack-rt7, finding 2), for the connection tests.

From each of many loopback source addresses, one TCP connection that sends the
first byte of a TLS record (``0x16``) and nothing more, reset after ``renew_s``
(staggered over the addresses) and opened again: no TLS, no crypto.  Before,
a connection that had sent a byte kept its place 2 s in a full service, so
32 addresses renewing every 1.5 s held a clean-room node.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time


class OneByteOpeners:
    """Run the attack in a thread while in the ``with`` block.

    ``patient``: an address whose connection the server closed opens the next
    one only when its period ends (the red team's ``--patient``, at most one
    connection per address per ``renew_s``); otherwise at once.
    """

    def __init__(
        self,
        address: tuple[str, int],
        sources: list[str],
        *,
        renew_s: float = 1.5,
        patient: bool = False,
    ) -> None:
        self.address = address
        self.sources = sources
        self.renew_s = renew_s
        self.patient = patient
        self.opened = 0
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> OneByteOpeners:
        self._thread.start()
        time.sleep(self.renew_s + 0.3)  # every address holds a connection
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def _run(self) -> None:
        count = len(self.sources)
        await asyncio.gather(
            *(self._hold(source, n * self.renew_s / count) for n, source in enumerate(self.sources))
        )

    async def _hold(self, source: str, delay: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay)
        while not self._stop.is_set():
            started = time.monotonic()
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.bind((source, 0))
                await loop.sock_connect(sock, self.address)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await loop.sock_sendall(sock, b"\x16")  # a ClientHello's first byte
                self.opened += 1
                try:
                    await asyncio.wait_for(loop.sock_recv(sock, 1), self.renew_s)
                    self.closed_by_server += 1
                except TimeoutError:
                    continue  # held its place for the whole period: renew it
                except OSError:
                    self.closed_by_server += 1
            except OSError:
                pass
            finally:
                sock.close()
            if self.patient:
                await asyncio.sleep(max(0.0, self.renew_s - (time.monotonic() - started)))
            else:
                await asyncio.sleep(0.01)
