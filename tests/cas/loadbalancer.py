"""A TCP round-robin load balancer for the replica tests (like HAProxy in ``mode tcp``).

TLS passes through untouched, so enclaves still pin the CAS's CA.  Each new
connection goes to the next backend that accepts it; a backend that refuses
(its replica is dead) is skipped.  Established connections are not moved: a
replica killed mid-request breaks its clients' connections, and they retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading


class RoundRobinBalancer:
    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self._next = itertools.cycle(range(len(backends)))
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self.connections = [0] * len(backends)
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="balancer", daemon=True)

    def __enter__(self) -> RoundRobinBalancer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        def shut() -> None:
            for writer in list(self._writers):  # let the replicas see their clients go
                writer.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shut)
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=512)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.backends)):
            index = next(self._next)
            try:
                upstream = await asyncio.open_connection(*self.backends[index])
                self.connections[index] += 1
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
