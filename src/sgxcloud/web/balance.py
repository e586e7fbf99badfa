"""Connections evened out between the worker processes of one server.

Workers share one listening socket and the kernel gives each new connection
to whichever worker accepts first; an idle worker's event loop takes every
connection waiting at once.  Clients that keep their connections (an
enclave fleet behind a pool, a load generator) then sit on one worker while
another idles: 16 enclaves all on one of two CAS workers, measured, and the
second core unused.

So each worker publishes how many connections it holds, and a worker that
accepts a connection while a sibling holds fewer hands the connection over
(its descriptor, by ``SCM_RIGHTS`` on a Unix socket) instead of admitting it.
Only at accept: a connection moves at most once, before a byte of it is
read, and the worker it goes to admits it like one it accepted (limits, TLS
handshake, HTTP).  When a handover cannot be made (the sibling died, its
queue is full) the connection stays where it was accepted.

Connections made before a sibling was up (a worker starting, or replacing
one that died) are evened out too: a worker holding two or more above a
sibling answers one request at a time with ``Connection: close``
(:meth:`ConnectionGate.should_shed`); the client's next connection is then
placed at accept like any other.

Everything lives in a directory of the server's start, private to its user
(mode 0700, made by the parent): per worker ``<pid>.load`` (its count of
connections and of handovers received, 16 bytes mapped into memory) and
``<pid>.sock`` (where it receives).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import mmap
import os
import socket
import struct
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

from uvicorn.server import ServerState

log = logging.getLogger(__name__)

_COUNTS = struct.Struct("=qq")  # connections held, handovers received (ever)
RESCAN_S = 1.0
"""How often the directory is listed again for workers started or gone."""
IN_FLIGHT_S = 0.5
"""How long a handover sent counts towards its receiver's load at most, if the
receiver's count of handovers received does not show it first."""


class _Sibling:
    __slots__ = ("address", "counts", "pending", "pid", "seen_received", "sent_at")

    def __init__(self, pid: int, counts: mmap.mmap, address: str) -> None:
        self.pid = pid
        self.counts = counts
        self.address = address
        self.seen_received = _COUNTS.unpack_from(counts)[1]
        self.pending = 0  # handovers sent to it that its counts do not show yet
        self.sent_at = 0.0

    def estimate(self, now: float) -> int:
        """Its connections, with the handovers on their way to it."""
        held, received = _COUNTS.unpack_from(self.counts)
        if received != self.seen_received:  # (with 3+ workers, others' too: a guess)
            self.pending = max(0, self.pending - (received - self.seen_received))
            self.seen_received = received
        if self.pending and now - self.sent_at > IN_FLIGHT_S:
            self.pending = 0
        return held + self.pending

    def sent(self, now: float) -> None:
        self.pending += 1
        self.sent_at = now


class ConnectionBalancer:
    """One worker's side: publishes its count, hands over, receives."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pid = os.getpid()
        self.siblings: dict[int, _Sibling] = {}
        self.handed_over = 0
        self.received = 0
        self._scanned_at = 0.0
        self._scanned_mtime = 0
        self._load: mmap.mmap | None = None
        self._inbox: socket.socket | None = None
        self._outbox: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- this worker ---------------------------------------------------------------

    def start(
        self, loop: asyncio.AbstractEventLoop, receive: Callable[[socket.socket], None]
    ) -> None:
        """Publish a count of 0 and take handovers, each given to ``receive``."""
        load_path = self.directory / f"{self.pid}.load"
        fd = os.open(load_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _COUNTS.size)
            self._load = mmap.mmap(fd, _COUNTS.size)
        finally:
            os.close(fd)
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = str(self.directory / f"{self.pid}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        inbox.bind(address)
        inbox.setblocking(False)
        self._inbox = inbox
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._outbox.setblocking(False)
        self._loop = loop
        loop.add_reader(inbox.fileno(), self._take, receive)

    def stop(self) -> None:
        """Take no more handovers and withdraw from the directory."""
        if self._inbox is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inbox.fileno())
            self._inbox.close()
            self._inbox = None
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None
        for name in (f"{self.pid}.sock", f"{self.pid}.load"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / name)
        for sibling in self.siblings.values():
            sibling.counts.close()
        self.siblings.clear()

    def publish(self, held: int) -> None:
        if self._load is not None:
            _COUNTS.pack_into(self._load, 0, held, self.received)

    # -- handing over --------------------------------------------------------------

    def hand_over(self, sock: socket.socket, held: int) -> bool:
        """Send ``sock`` to the sibling holding fewest connections, if fewer than
        this worker's ``held``.  True: it was sent (close this copy)."""
        if self._outbox is None:
            return False
        now = time.monotonic()
        target, fewest = self._least_loaded(now)
        if target is None or fewest >= held:
            return False
        try:
            # (socket.send_fds ignores its address argument: sendmsg itself)
            self._outbox.sendmsg(
                [b"c"],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))],
                0,
                target.address,
            )
        except (BlockingIOError, InterruptedError):
            return False  # its queue is full: it is busy enough
        except OSError as exc:  # gone (died, replaced): forget it
            log.debug("worker %d takes no handover: %s", target.pid, exc)
            self._forget(target, unlink=not _alive(target.pid))
            return False
        target.sent(now)
        self.handed_over += 1
        return True

    def fewest(self) -> int | None:
        """The fewest connections a sibling holds (with those on their way to
        it), or None when there is no sibling."""
        target, fewest = self._least_loaded(time.monotonic())
        return fewest if target is not None else None

    def _least_loaded(self, now: float) -> tuple[_Sibling | None, int]:
        if now - self._scanned_at >= RESCAN_S or self._directory_changed():
            self._scan(now)
        target: _Sibling | None = None
        fewest = 0
        for sibling in self.siblings.values():
            load = sibling.estimate(now)
            if target is None or load < fewest:
                target, fewest = sibling, load
        return target, fewest

    def _take(self, receive: Callable[[socket.socket], None]) -> None:
        assert self._inbox is not None
        for _ in range(64):  # then let the loop breathe
            try:
                _, fds, _flags, _ = socket.recv_fds(self._inbox, 16, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("connection handover not received: %s", exc)
                return
            for fd in fds:
                try:
                    sock = socket.socket(fileno=fd)
                except OSError:
                    os.close(fd)
                    continue
                if sock.type != socket.SOCK_STREAM or sock.family not in (
                    socket.AF_INET,
                    socket.AF_INET6,
                ):
                    sock.close()  # only siblings can write here; still, only TCP
                    continue
                sock.setblocking(False)
                self.received += 1
                receive(sock)

    def _directory_changed(self) -> bool:
        """Whether a worker started or left since the last scan (a stat, ~1 µs)."""
        try:
            return os.stat(self.directory).st_mtime_ns != self._scanned_mtime
        except OSError:
            return False

    def _scan(self, now: float) -> None:
        self._scanned_at = now
        with contextlib.suppress(OSError):
            self._scanned_mtime = os.stat(self.directory).st_mtime_ns
        try:
            names = {entry.name for entry in os.scandir(self.directory)}
        except OSError:
            return
        pids = {int(name[:-5]) for name in names if name.endswith(".load") and name[:-5].isdigit()}
        for pid in list(self.siblings):
            if pid not in pids:
                self._forget(self.siblings[pid], unlink=False)
        for pid in pids - set(self.siblings) - {self.pid}:
            if f"{pid}.sock" not in names:
                continue  # still starting
            try:
                fd = os.open(self.directory / f"{pid}.load", os.O_RDONLY)
            except OSError:
                continue
            try:
                load = mmap.mmap(fd, _COUNTS.size, prot=mmap.PROT_READ)
            except (OSError, ValueError):
                continue
            finally:
                os.close(fd)
            self.siblings[pid] = _Sibling(pid, load, str(self.directory / f"{pid}.sock"))

    def _forget(self, sibling: _Sibling, *, unlink: bool) -> None:
        self.siblings.pop(sibling.pid, None)
        sibling.counts.close()
        if unlink:  # a worker killed outright leaves its files
            for name in (f"{sibling.pid}.sock", f"{sibling.pid}.load"):
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerServerState(ServerState):
    """uvicorn's per-server state, kept by the connection gate of a worker that
    balances: the connections it serves came from uvicorn's accept or from a
    sibling, and both kinds are counted, shut down and dated alike
    (:meth:`ConnectionGate.drain` does at shutdown what uvicorn's server does
    for the connections it knows)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self._config = config
        self._dated = (0, [])

    @property  # type: ignore[override]
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        """What uvicorn's server sets once a second: Date and the configured headers."""
        second = int(time.time())
        if self._dated[0] != second:
            date = (
                [(b"date", formatdate(second, usegmt=True).encode())]
                if self._config.date_header
                else []
            )
            self._dated = (second, date + self._config.encoded_headers)
        return self._dated[1]

    @default_headers.setter
    def default_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        pass  # ServerState.__init__ sets it; computed here
